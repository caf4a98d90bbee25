"""What a CLI's --helpfull must show: every flag its define_flags() defines, with its help."""

import json
import subprocess
import sys

ABSL_EMPTY_HELP = "(no help available)"  # what absl stores for a flag defined with help ""


def defined_flags(module: str) -> dict:
    """{name: (help, is_bool)} of every flag `module.define_flags()` defines, read from absl's
    FLAGS in a fresh interpreter (the test process may hold other modules' flags)."""
    code = (f"import json; from absl import flags; import {module} as cli; "
            "before = set(flags.FLAGS); cli.define_flags(); "
            "print(json.dumps({n: (flags.FLAGS[n].help, flags.FLAGS[n].boolean) "
            "for n in sorted(set(flags.FLAGS) - before)}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def helpfull_entries(stdout: str) -> dict:
    """{shown name: help text} from --helpfull output: each flag is a line "  --name: help"
    ("--[no]name" for booleans, "-?,--[no]help" for a short alias) followed by its help
    wrapped over more indented lines."""
    entries, name = {}, None
    for line in stdout.splitlines():
        if line.startswith("  -"):
            name = line.split(":", 1)[0].strip().split(",")[-1].removeprefix("--")
            entries[name] = line.split(":", 1)[1]
        elif line.startswith("    ") and name is not None:
            entries[name] += line
    return entries


def check_every_flag_is_documented(module: str, helpfull_stdout: str) -> dict:
    """Asserts each flag of `module` is in --helpfull with its whole help text (compared without
    whitespace, as absl wraps it), and that the help is real: 3+ words, not absl's filler.
    Returns the flags checked."""
    defined = defined_flags(module)
    entries = helpfull_entries(helpfull_stdout)
    squeeze = lambda text: "".join(text.split())
    for flag, (help_text, is_bool) in defined.items():
        shown = f"[no]{flag}" if is_bool else flag
        assert shown in entries, f"--{flag} is not in --helpfull"
        assert help_text != ABSL_EMPTY_HELP, f"--{flag} has no help"
        assert len(help_text.split()) >= 3, f"--{flag}: help {help_text!r} explains nothing"
        assert squeeze(help_text) in squeeze(entries[shown]), f"--{flag}: help not shown whole"
    return defined
