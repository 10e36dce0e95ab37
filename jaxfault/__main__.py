"""The `jaxfault` command: one entry point for every CLI, usable from any directory.

    jaxfault sparrow --ber 1e-3          (= python -m eval.sparrow --ber 1e-3 in the repository)
    jaxfault train-neuralfuse --ber 0.01 (= python -m train.neuralfuse --ber 0.01)
    jaxfault --help                      (the list of commands)

Installed with the package, the command-line modules live in jaxfault.apps.eval / .train (the
repository's eval/ and train/ folders), so no top-level `eval` or `train` package is installed.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "sparrow": ("eval.sparrow", "error-injected inference under Sparrow / SEC-DED / no ECC"),
    "exponents": ("eval.exponents", "exponent-difference histogram of a model's weights"),
    "vulnerability": ("eval.vulnerability", "accuracy drop per bit position / tensor of a number format, accuracy vs BER per format x scheme"),
    "swim": ("eval.swim", "SWIM: write-verify selection under CiM variation"),
    "neuralfuse": ("eval.neuralfuse", "evaluate a trained NeuralFuse generator"),
    "energy": ("eval.energy", "Eyeriss-like energy estimate of a model"),
    "tradeoff": ("eval.tradeoff", "accuracy vs energy of protection"),
    "campaign": ("eval.campaign", "sharded, resumable fault-injection campaign"),
    "plan": ("eval.plan", "least-energy protection plan at a target accuracy"),
    "accuracy": ("eval.accuracy", "clean accuracy of a checkpoint"),
    "run": ("eval.run", "evaluate under any registered fault model (one config, one row schema)"),
    "train-base": ("train.base", "train a base classifier"),
    "train-neuralfuse": ("train.neuralfuse", "train a NeuralFuse generator with EOPM"),
    "train-lm": ("train.lm", "train the small byte-level language model (the default LM)"),
}


def load_command(module: str):
    """The CLI module: the installed jaxfault.apps copy, else the repository's own folder."""
    try:
        return importlib.import_module(f"jaxfault.apps.{module}")
    except ModuleNotFoundError:
        return importlib.import_module(module)


def available() -> dict:
    """The commands whose modules exist in this installation."""
    out = {}
    for name, (module, text) in COMMANDS.items():
        try:
            load_command(module)
        except ModuleNotFoundError:
            continue
        out[name] = (module, text)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: jaxfault COMMAND [ARGS...]   (jaxfault COMMAND --help for its options)\n\ncommands:")
        for name, (_, text) in available().items():
            print(f"  {name:18s} {text}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        from jaxfault.core.errors import nearest_hint

        print(f"jaxfault: error: unknown command {name!r}{nearest_hint(name, COMMANDS)}; "
              f"run 'jaxfault --help' for the list", file=sys.stderr)
        return 2
    mod = load_command(COMMANDS[name][0])
    from jaxfault.cli import run_main

    sys.argv = [f"jaxfault {name}"] + argv[1:]
    run_main(mod.main, argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
