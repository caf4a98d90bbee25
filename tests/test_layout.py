"""The package's layout: folders are the stages of the data's path and imports only go back.

    data -> input -> models -> scoring -> training -> inference -> evaluation -> slides -> view

A module of a stage may import its own stage and earlier ones, never a later one, and no package
module imports a command line (idc_engine/<name>.py at the top). The foundation modules
(errors, cli, atomic_files, the package's __init__) import no stage. docs/layout.md
describes the same order.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "idc_engine"
STAGES = ("data", "input", "models", "scoring", "training", "inference", "evaluation", "slides",
          "view")
FOUNDATION = ("errors", "cli", "atomic_files", "__init__")
MAX_FUNCTION_LINES = 80


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _imported(tree: ast.Module, package_parts: tuple) -> set:
    """Dotted names under idc_engine that a module imports, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("idc_engine")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(("idc_engine", *package_parts[:len(package_parts) - node.level],
                                 base)).strip(".")
            if base.startswith("idc_engine"):
                names |= {f"{base}.{a.name}" for a in node.names}
    return names


def _rank(parts: tuple) -> float:
    """A module's place on the data's path: foundation 0, stage k at k + 1, command lines last."""
    if len(parts) == 1:
        return 0 if parts[0] in FOUNDATION else float("inf")
    return STAGES.index(parts[0]) + 1


def _target_rank(dotted: str) -> float:
    parts = dotted.split(".")[1:]
    if not parts or parts[0] == "__version__":
        return 0
    if parts[0] in STAGES:
        return STAGES.index(parts[0]) + 1
    return 0 if parts[0] in FOUNDATION else float("inf")


def test_every_folder_is_a_stage():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(STAGES), folders


def test_imports_only_point_back_along_the_data_path():
    backward = []
    for path, parts in _modules():
        rank = _rank(parts)
        if rank == float("inf"):
            continue  # command lines may import any stage
        for name in _imported(ast.parse(path.read_text()), parts[:-1]):
            if _target_rank(name) > rank:
                backward.append(f"{'/'.join(parts)}.py imports {name}")
    assert not backward, "imports against the data's path:\n" + "\n".join(backward)


def test_the_checker_sees_a_backward_import():
    tree = ast.parse("from idc_engine.evaluation import plots\nimport idc_engine.train\n")
    names = _imported(tree, ("data",))
    assert {_target_rank(n) for n in names} == {STAGES.index("evaluation") + 1, float("inf")}
    assert max(_target_rank(n) for n in names) > _rank(("data", "records"))


def test_long_functions_say_why():
    unexplained = []
    for path, parts in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if length > MAX_FUNCTION_LINES and "Long because" not in doc:
                    unexplained.append(f"{'/'.join(parts)}.py:{node.lineno} {node.name} ({length})")
    assert not unexplained, (f"functions over {MAX_FUNCTION_LINES} lines without 'Long because' "
                             "in their docstring:\n" + "\n".join(unexplained))
