"""The one base of every error the engine reports to its user.

A stage raises a subclass of `EngineError` (ManifestError, ConfigError, ConversionError,
ServingError, ...) whose message names the file or flag at fault and what to do; the command
lines print it as `error: <message>` and exit with its `exit_code` (idc_engine/cli.py). Anything
else that escapes is a bug and keeps its traceback.
"""


class EngineError(Exception):
    """A problem with the user's input, flags or files; the message names the file or flag."""
    exit_code = 2


class RunStopped(EngineError):
    """A run that stopped part-way for a reason it reports (e.g. a non-finite loss)."""
    exit_code = 3
