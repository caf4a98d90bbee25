"""Fits the stain-normalisation target of a conversion from its train split.

    python -m idc_engine.stain fit --data_dir=DATA

writes DATA/stain_target.json (atomically): the Reinhard LAB statistics and the Macenko stain
matrix and concentrations of the train split's typical patch (idc_engine/input/stain_target.py).
`python -m idc_engine.train --stain_normalization=reinhard|macenko` reads it and carries it into
the exported model, so evaluate, predict and explain normalise the same way with no flag.
"""

import dataclasses
import json

from absl import app

from idc_engine import cli, errors


class StainCommandError(errors.EngineError):
    """A bad flag of python -m idc_engine.stain."""


@dataclasses.dataclass
class StainConfig:
    data_dir: str = cli.option("", "A directory written by python -m idc_engine.convert.")
    max_patches: int = cli.option(20000, "Train patches the target is fitted on: every k-th "
                                  "patch of the split, so all its patients count.")


def define_flags() -> None:
    cli.define_flags(StainConfig)


def main(argv) -> int:
    if argv[1:] != ["fit"]:
        raise app.UsageError(f"usage: python -m idc_engine.stain fit --data_dir=DATA "
                             f"(got {' '.join(argv[1:]) or 'no command'})")
    config = cli.config_from_flags(StainConfig)
    if not config.data_dir:
        raise StainCommandError("--data_dir is required: a directory written by "
                                "python -m idc_engine.convert")
    if config.max_patches < 1:
        raise StainCommandError(f"--max_patches={config.max_patches} must be at least 1")
    cli.keep_engine_logs_only()
    from idc_engine.input import stain_target  # TensorFlow loads only past this point

    target = stain_target.fit_and_write(config.data_dir, config.max_patches)
    print(f"wrote {stain_target.target_path(config.data_dir)} from {target['patches']} train "
          "patches with tissue")
    print(json.dumps({k: target[k] for k in ("reinhard", "macenko")}, indent=1))
    return 0


def run() -> None:
    """Console-script entry point (idc-stain)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
