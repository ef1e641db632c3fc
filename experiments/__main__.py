"""``python -m experiments``: ``list``, ``validate``, ``run``, ``status``, ``lr-search``,
``shifts``/``shift`` and ``rekey``. The command line is parsed without torch, optuna or
submitit (``experiments.cli_args``); each command imports what it uses, so ``--help`` and
``list`` answer at once."""

from __future__ import annotations

import sys

import yaml

from experiments.cli_args import build_parser
from experiments.spec_check import SpecError, list_specs, spec_path


def _list() -> int:
    """``list``: each spec's name and citation, read as written (``validate`` checks them)."""
    for name in list_specs():
        spec = yaml.safe_load(spec_path(name).read_text()) or {}
        print(f"{name:22s} {spec.get('citation', '')}")
    return 0


def main(argv: list[str] | None = None, *, sigterm: bool = False) -> int:
    """Run one command; ``sigterm``: SIGTERM ends it as Ctrl-C does (the command line only: a
    process that imports ``main`` keeps its own handler)."""
    args = build_parser().parse_args(argv)
    if args.cmd == "list":
        return _list()
    if sigterm:
        from experiments.runner import stop_on_sigterm

        stop_on_sigterm()
    if args.cmd == "lr-search":
        from experiments.lr_search import run_lr_search

        return run_lr_search(args)
    if args.cmd in ("shifts", "shift"):
        from experiments.shifts import run_shifts_command

        return run_shifts_command(args)
    if args.cmd == "rekey":
        from experiments.rekey import write_rekey

        print(f"wrote {write_rekey()}")
        return 0
    from experiments import commands

    try:
        if args.cmd == "validate":
            return commands.validate_command(args)
        if args.cmd == "status":
            return commands.status_command(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return commands.run_command(args)


if __name__ == "__main__":
    sys.exit(main(sigterm=True))
