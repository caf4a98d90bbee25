"""The int8 model a benchmark times: the export's, or one quantized for an export without it."""

import dataclasses
import json
import os

import numpy as np


def int8_export_paths(paths, model, pre: dict, images, work: str):
    """(export paths whose int8 model is used, where it comes from): the export's (and whether
    parity held there), or, without one (an untrained export has no val split to measure parity
    on), quantized into `work` by the export's recipe (training/int8_export.py) from `images`,
    uint8 [N, 50, 50, 3], and the float head beside it. model: the export's Keras model; pre:
    its preprocessing.json (no stain normalisation)."""
    from idc_engine.training import int8_export

    if os.path.isfile(paths.int8):
        with open(paths.int8_parity) as f:
            return paths, f"the export's (offered: {json.load(f)['offered']})"
    body, weight, bias = int8_export.fold_for_int8(model)
    mean, std = np.float32(pre["channel_mean"]), np.float32(pre["channel_std"])
    paths = dataclasses.replace(paths, int8=os.path.join(work, "model_int8.tflite"),
                                int8_head=os.path.join(work, "model_int8_head.npz"))
    with open(paths.int8, "wb") as f:
        f.write(int8_export.quantize(body, (images[:1024] - mean) / std))
    np.savez(paths.int8_head, weight=weight, bias=bias)
    return paths, f"quantized here from {min(len(images), 1024)} benchmark images"
