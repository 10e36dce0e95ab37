"""The module graph: the library never imports the command-line layers, CLIs never import each
other, bench imports only the library, and the package list in pyproject.toml is complete."""
import ast
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
