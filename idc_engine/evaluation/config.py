"""The evaluation's configuration: one dataclass, one field per `python -m idc_engine.evaluate` flag.

The absl flags of idc_engine/evaluate.py are these fields, help text included (idc_engine/cli.py);
tests build an `EvaluateConfig` directly. `validate()` turns every bad flag into one message
naming it, before any TensorFlow work starts.
"""

import dataclasses
import os

from idc_engine import cli, errors
from idc_engine.evaluation import slide_maps
from idc_engine.inference import runtime as runtime_lib
from idc_engine.inference import tta
from idc_engine.scoring import thresholds
from idc_engine.training.run_dir import RunDir


class EvaluationError(errors.EngineError, ValueError):
    """An evaluation that cannot run as asked; the message names the flag or path."""


@dataclasses.dataclass
class EvaluateConfig:
    model_dir: str = cli.option("", "A training run (python -m idc_engine.train): its "
                                "export/saved_model is evaluated, the chosen threshold goes to "
                                "its export/threshold.json and the metrics to its TensorBoard.")
    data_dir: str = cli.option("", "A directory written by python -m idc_engine.convert.")
    split: str = cli.option("test", "The split to evaluate (train, val, test).")
    threshold: str = cli.option(thresholds.DEFAULT_RULE, "Decision threshold on IDC probability: "
                                f"{thresholds.RULE_HELP}. A rule is applied on --threshold_split "
                                "and the threshold it finds is used unchanged on --split. max_f1: "
                                "best IDC F1; youden: best sensitivity + specificity - 1; "
                                "recall:0.90: the highest threshold with IDC sensitivity >= 0.90; "
                                "specificity:0.95: the lowest with IDC specificity >= 0.95.")
    threshold_split: str = cli.option("val", "The split the threshold is chosen on: val. test "
                                      "and train are refused (a threshold chosen on the test "
                                      "labels, or on the patients the model was fitted to, "
                                      "makes every figure optimistic).")
    bootstrap: int = cli.option(1000, "Bootstrap replicates over patients for the 95% confidence "
                                "intervals (0: none).")
    seed: int = cli.option(0, "Seed of the bootstrap: the same seed gives the same intervals.")
    slides: str = cli.option("4", "Slide maps (tissue, true IDC, predicted IDC probability) to "
                             "draw: all; a count N (patients spread over the range of IDC "
                             "extent); or comma-separated patient ids (a number that is a "
                             "patient id of the split is taken as that id); 0: none.")
    output_dir: str = cli.option("", "Where metrics.json, the figures and slides/ go; default "
                                 "<model_dir>/evaluation/<split>.")
    batch_size: int = cli.option(512, "Patches per call of the served model.")
    figures: bool = cli.option(True, "Draw the PNG figures and slide maps and write the "
                               "TensorBoard summaries (python -m idc_engine.crossval's folds may "
                               "go without).")
    tta: str = cli.option("none", "Test-time augmentation: none, or d4 (the mean IDC "
                          "probability over the 8 rotations/mirrorings of each patch, one batch "
                          "of 8N per call; idc_engine/inference/tta.py). With d4 the report is "
                          "the TTA model's and adds the metrics without TTA and the images/s of "
                          "both.")
    runtime: str = cli.option("auto", runtime_lib.HELP)

    @property
    def run_dir(self) -> RunDir:
        """Every path under --model_dir."""
        return RunDir(self.model_dir)

    @property
    def saved_model_dir(self) -> str:
        return self.run_dir.export.saved_model

    @property
    def resolved_output_dir(self) -> str:
        return self.output_dir or self.run_dir.evaluation(self.split)

    @property
    def threshold_is_fixed(self) -> bool:
        """True when --threshold is a number: nothing is chosen, no split is predicted for it."""
        return thresholds.parse_rule(self.threshold)[0] == "fixed"

    def validate(self) -> None:
        """Checks every flag before any TensorFlow work; raises EvaluationError naming it."""
        def need(condition, message):
            if not condition:
                raise EvaluationError(message)

        need(self.threshold_split != "test",
             "--threshold_split=test is refused: the test split must stay unseen until it is "
             "scored, and a threshold chosen on its labels makes every test figure optimistic; "
             "choose it on val (the default)")
        need(self.threshold_split != "train",
             "--threshold_split=train is refused: the model was fitted to the training "
             "patients, so its probabilities there are more confident and more often right than "
             "on patients it has not seen, and a threshold chosen on them flatters every "
             "figure; choose it on val (the default), held out from training")
        need(self.model_dir, "--model_dir is required: a directory written by "
             "python -m idc_engine.train")
        need(os.path.isdir(self.model_dir), f"--model_dir {self.model_dir!r} does not exist")
        need(os.path.isfile(os.path.join(self.saved_model_dir, "saved_model.pb")),
             f"{self.saved_model_dir!r} holds no SavedModel: train with --export (the default) "
             "so the run exports its best model there")
        need(self.data_dir, "--data_dir is required: a directory written by "
             "python -m idc_engine.convert")
        need(self.split, "--split is required")
        try:
            fixed = self.threshold_is_fixed
        except ValueError as e:
            raise EvaluationError(f"--threshold: {e}") from e
        need(fixed or self.threshold_split,
             "--threshold_split is required unless --threshold is a number")
        need(self.bootstrap >= 0, "--bootstrap must be >= 0 (0: no confidence intervals)")
        need(self.batch_size >= 1, "--batch_size must be >= 1")
        need(self.runtime in runtime_lib.RUNTIMES, f"--runtime={self.runtime!r}: use one of "
             f"{', '.join(runtime_lib.RUNTIMES)}")
        need(self.tta in tta.TTA_MODES, f"--tta={self.tta!r}: use one of "
             f"{', '.join(tta.TTA_MODES)}")
        try:
            slide_maps.parse_selection(self.slides)
        except ValueError as e:
            raise EvaluationError(str(e)) from e
