"""The model a benchmark serves when given none: an untrained CancerNet, exported as training
exports (throughput does not depend on the weights' values)."""

import os

# Mean/std of a synthetic train split: only the untrained model's normalization.
_SYNTHETIC_MEAN = [196.9627, 145.5059, 191.7613]
_SYNTHETIC_STD = [43.724, 44.734, 28.9458]


def export_untrained_cancernet(export_dir: str, image_size: int = 50) -> None:
    import keras

    from idc_engine import models
    from idc_engine.training import export

    keras.utils.set_random_seed(0)
    build = lambda: models.build_model("cancernet", (image_size, image_size, 3))  # noqa: E731
    export.export_model(build(), build, export_dir, image_size, _SYNTHETIC_MEAN, _SYNTHETIC_STD)


def benchmark_export(model: str | None, work: str, image_size: int = 50):
    """(run_dir.ExportPaths, description): `model`'s export (a model_dir or export dir), or
    an untrained CancerNet's exported into `work`."""
    from idc_engine.training import run_dir

    if model:
        paths = run_dir.find_export(model)
        return paths, paths.export_dir
    export_untrained_cancernet(os.path.join(work, "export"), image_size)
    paths = run_dir.find_export(os.path.join(work, "export"))
    return paths, f"untrained CancerNet {image_size}x{image_size} (export_model)"
