"""The `hope-mega` command: one subcommand per user job.

Each subcommand lives in its own module, which exposes `register(subparsers)`; that function adds
its parser and sets `func` to the callable that runs it. Modules keep heavy imports (torch,
deepspeed, ...) inside the callable so `hope-mega --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "hope_mega.data.tokenizer_cli",  # hope-mega tokenizer train
    "hope_mega.data.prep_cli",  # hope-mega prep
    "hope_mega.train",  # hope-mega train
    "hope_mega.params",  # hope-mega params
    "hope_mega.smoke",  # hope-mega smoke
    "hope_mega.demo",  # hope-mega demo
    "hope_mega.convert.cli",  # hope-mega convert
    "hope_mega.eval.cli",  # hope-mega eval
    "hope_mega.plot",  # hope-mega plot
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hope-mega", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency, not a subcommand not built yet
                raise
            continue
        module.register(subparsers)
    return parser


def _quiet_known_warnings() -> None:
    """Warnings every CPU run prints and no user can act on."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    warnings.filterwarnings("ignore", message="Triton is not supported on current platform")
    warnings.filterwarnings("ignore", message=".*torch.jit.script_method.*is deprecated")


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError

    _quiet_known_warnings()
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ConfigError as err:
        print(f"hope-mega {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
