"""The ``helixfed`` command: a thin dispatcher.

Each package owns its subcommands and registers them under the ``helixfed.commands`` entry-point
group (see pyproject.toml); this module discovers them, so ``common`` never imports ``client`` or
``server``. A registered object is a function ``register(subparsers)`` that adds its parser and
sets ``func`` (``args -> exit code``) as the parser default.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from importlib.metadata import entry_points, version

# Flower must never try to pip-install a run's dependencies at run time (no internet here,
# and an institution's agent must not install code it was sent).
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

COMMAND_GROUP = "helixfed.commands"


def _version_command(args: argparse.Namespace) -> int:
    import torch

    print(f"helixfed {version('helixfed')}")
    if args.verbose:
        import flwr
        import opacus

        print(f"flwr {flwr.__version__}, opacus {opacus.__version__}, torch {torch.__version__}, "
              f"cuda available: {torch.cuda.is_available()}")
    return 0


def register_common(subparsers: argparse._SubParsersAction) -> None:
    """``helixfed version``."""
    parser = subparsers.add_parser("version", help="print the helixfed version")
    parser.add_argument("--verbose", action="store_true", help="also print flwr/opacus/torch versions")
    parser.set_defaults(func=_version_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helixfed",
        description="Federated, differentially private training of a genomic transformer.")
    parser.add_argument("--log-level", default="WARNING", help="python logging level (default WARNING)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    registrations = sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)
    for entry in registrations:
        entry.load()(subparsers)
    return parser


def _interrupt_on_sigterm() -> None:
    """``docker stop``, ``kill`` and Kubernetes send SIGTERM: treat it like Ctrl-C, so commands run
    their clean-up (stopping every process they started) instead of dying and orphaning them."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    _interrupt_on_sigterm()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
