"""The README's "Use as a library" examples run as written (against the tiny test checkpoints)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def library_examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Use as a library", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_one_example_per_method():
    blocks = library_examples()
    joined = "\n".join(blocks)
    for name in ("hbm_faults", "cim_variation", "sram_bit_errors", "compose", "activation_bit_flips", "layers_from_model"):
        assert name in joined, name


@pytest.mark.slow
def test_readme_library_examples_run(default_cache, capsys):
    pytest.importorskip("jaxfault.data").load_dataset("fashion_mnist", source="local")
    namespace: dict = {}
    for block in library_examples():
        exec(compile(block, str(README), "exec"), namespace)   # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    assert "sparrow" in out and "SWIM" in out and "SRAM" in out and "HBM + SRAM" in out and "layers" in out
    assert "activation flips" in out
