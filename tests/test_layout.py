"""The module graph: the library never imports the command-line layers (nor argparse, nor
jaxfault.cli), its messages name settings rather than CLI flags, CLIs never import each other,
bench imports only the library, and the package list in pyproject.toml is complete."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def top(name: str) -> str:
    return name.split(".")[0]


def test_library_never_imports_cli_layers():
    for path in (ROOT / "jaxfault").rglob("*.py"):
        bad = {m for m in imports_of(path) if top(m) in ("eval", "train", "bench")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


# The command-line layer inside the package: the flag helpers and the `jaxfault` entry point.
CLI_LAYER = {"jaxfault/cli.py", "jaxfault/__main__.py"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def library_modules():
    for path in sorted((ROOT / "jaxfault").rglob("*.py")):
        if str(path.relative_to(ROOT)) not in CLI_LAYER:
            yield path


def test_library_never_imports_argparse_or_the_cli_helpers():
    for path in library_modules():
        bad = {m for m in imports_of(path) if m == "argparse" or m == "jaxfault.cli"}
        tree = ast.parse(path.read_text())
        bad |= {f"jaxfault.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "jaxfault" for a in node.names if a.name == "cli"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_library_strings_name_settings_not_cli_flags():
    """Every string of the library but its docstrings (messages, notes, default names) names a
    setting (as `name`, which jaxfault.cli shows as --name), never a flag spelled --name."""
    found = []
    for path in library_modules():
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if FLAG.search(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "library strings naming CLI flags:\n" + "\n".join(found)


def test_clis_do_not_import_each_other_and_bench_imports_only_the_library():
    for folder in ("eval", "train", "bench"):
        for path in (ROOT / folder).glob("*.py"):
            mods = imports_of(path)
            if folder == "bench":
                bad = {m for m in mods if top(m) in ("eval", "train")}
            else:
                bad = {m for m in mods if top(m) in ("eval", "train", "bench")}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_pyproject_lists_every_package():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxfault").rglob("__init__.py")}
    assert found <= listed, f"missing from pyproject.toml: {sorted(found - listed)}"
    assert cfg["package-dir"] == {"jaxfault.apps.eval": "eval", "jaxfault.apps.train": "train"}
