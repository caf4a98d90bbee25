"""What every command line shares: flags defined from a config dataclass, one error path.

A command's options are one dataclass whose fields carry their help text:

    @dataclasses.dataclass
    class EvaluateConfig:
        model_dir: str = cli.option("", "A directory written by python -m idc_engine.train.")

`define_flags(EvaluateConfig)` turns each field into an absl flag of the field's name and type,
`config_from_flags(EvaluateConfig)` reads them back into an instance, and `run(define, main)` is
every console script's entry point: an `errors.EngineError` escaping `main` is printed as
`error: <message>` on stderr and ends the process with the error's exit code (2: bad input,
3: a run that stopped), without a traceback.
"""

import dataclasses
import logging as std_logging
import sys
import typing

from absl import app, flags
from absl import logging as absl_logging

from idc_engine import errors

# Flags this module defines for a command line belong to that command's module, so its --help
# lists them and --helpfull groups them under it.
flags.disclaim_key_flags()


def option(default, help_text: str, **metadata):
    """A config field with its flag's help text (dataclasses.field metadata["help"])."""
    return dataclasses.field(default=default, metadata={"help": help_text, **metadata})


def _flag_type(field: dataclasses.Field) -> type:
    """bool, int, float or str: the field's declared type, without `| None`."""
    kind = field.type
    if isinstance(kind, str):
        kind = {"bool": bool, "int": int, "float": float}.get(kind.split("|")[0].strip(), str)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def define_flags(config_class) -> None:
    """One absl flag per field of the dataclass, named, typed and described by the field."""
    definers = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}
    for field in dataclasses.fields(config_class):
        define = definers.get(_flag_type(field), flags.DEFINE_string)
        define(field.name, field.default, field.metadata["help"])


def config_from_flags(config_class):
    """An instance of the dataclass holding the parsed flags' values."""
    values = flags.FLAGS
    return config_class(**{field.name: values[field.name].value
                           for field in dataclasses.fields(config_class)})


def keep_engine_logs_only() -> None:
    """INFO lines from idc_engine only: TensorFlow's own chatter through absl (saver timings,
    SavedModel assets) would drown the engine's progress lines; its warnings stay."""
    absl_logging.get_absl_logger().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "idc_engine" in record.pathname)
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)


def reporting_errors(main):
    """main(argv) -> exit code, with an EngineError printed and turned into its exit code."""
    def wrapped(argv) -> int:
        try:
            return main(argv)
        except errors.EngineError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    return wrapped


def run(define, main) -> None:
    """A console script's entry point: define its flags, parse them, run main."""
    define()
    app.run(reporting_errors(main))
