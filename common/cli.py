"""The ``helixfed`` command: a thin dispatcher, and the one place that names every subcommand.

:data:`COMMANDS` maps each subcommand to the function that adds its parser (``module:function``,
the module that implements it) and its one-line help. A module is imported only when its command
runs, so ``helixfed --help`` imports no model code and ``common`` never imports ``client`` or
``server`` (the table holds their names, not their code). An added parser sets ``func``
(``args -> exit code``) as its default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from importlib.metadata import version

# Flower must never try to pip-install a run's dependencies at run time (no internet here,
# and an institution's agent must not install code it was sent).
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

COMMANDS: dict[str, tuple[str, str]] = {
    # a simulated federation, the coordinating server and its tools
    "simulate": ("server.ops.simulate:add_simulate_parser", "run a simulated federation on this machine"),
    "server": ("server.ops.deploy:add_server_parser", "run the coordinating server (SuperLink + ServerApp)"),
    "certs": ("server.ops.certs:add_certs_parser", "create the CA, the server certificate and the institutions' keys"),
    "status": ("server.ops.status:add_status_parser",
               "who is connected to a running server, its round, epsilon per institution"),
    "pretrain": ("server.ops.pretrain:add_pretrain_parser",
                 "pre-train the backbone on public FASTA (masked bases, no DP)"),
    # an institution
    "client": ("client.commands.supernode:add_client_parser", "run an institution's agent (SuperNode + ClientApp)"),
    "train": ("client.commands.train:add_train_parser", "train on one institution's own data (no federation)"),
    "privacy": ("client.commands.privacy:add_privacy_parser", "show the privacy budget an institution has spent"),
    "audit": ("client.commands.audit:add_audit_parser",
              "privacy audit: canary exposure and membership inference, with and without DP"),
    # data and baselines
    "data": ("common.data.cli:add_data_parser",
             "check or import an institution's files; generate data for a simulated federation"),
    "baseline": ("common.analysis.baseline_cli:add_baseline_parser",
                 "score the classic baselines (k-mer and PWM logistic regressions) on a dataset"),
    # a trained model
    "evaluate": ("common.analysis.cli:add_evaluate_parser",
                 "metrics of a checkpoint on every task a dataset holds, with the k-mer baseline"),
    "predict": ("common.analysis.cli:add_predict_parser",
                "class probabilities for the sequences of a FASTA or table file (TSV out)"),
    "variant": ("common.analysis.cli:add_variant_parser", "impact scores for a TSV of id, ref, alt (SNVs and small indels)"),
    "attention": ("common.analysis.cli:add_attention_parser",
                  "attention heatmap and per-position attention of one sequence (PNG)"),
    "motifs": ("common.analysis.cli:add_motifs_parser",
               "the k-mers attention keeps returning to, their enrichment and closest known motif"),
    "serve": ("server.service.server:add_serve_parser",
              "serve a checkpoint over gRPC (predict, variants, attention, evaluate, model info)"),
    "query": ("server.service.client:add_query_parser",
              "ask a running 'helixfed serve' for predictions (TSV out, as 'helixfed predict')"),
    "version": ("common.cli:add_version_parser", "print the helixfed version"),
}
EVERY_COMMAND = "*"


def add_version_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("version", help=COMMANDS["version"][1])
    parser.add_argument("--verbose", action="store_true", help="also print flwr/opacus/torch versions")
    parser.set_defaults(func=_version_command)


def _version_command(args: argparse.Namespace) -> int:
    print(f"helixfed {version('helixfed')}")
    if args.verbose:
        import flwr
        import opacus
        import torch

        print(f"flwr {flwr.__version__}, opacus {opacus.__version__}, torch {torch.__version__}, "
              f"cuda available: {torch.cuda.is_available()}")
    return 0


def load_command(name: str):
    """The function that adds subcommand ``name``'s parser (importing its module)."""
    module, function = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), function)


def build_parser(command: str | None = EVERY_COMMAND) -> argparse.ArgumentParser:
    """The ``helixfed`` parser with ``command``'s full parser (every command's for ``EVERY_COMMAND``);
    the others appear in the listing with their help only."""
    parser = argparse.ArgumentParser(
        prog="helixfed",
        description="Federated, differentially private training of a genomic transformer.")
    parser.add_argument("--log-level", default="WARNING", help="python logging level (default WARNING)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        if command in (name, EVERY_COMMAND):
            load_command(name)(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word after the global options), if any."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _interrupt_on_sigterm() -> None:
    """``docker stop``, ``kill`` and Kubernetes send SIGTERM: treat it like Ctrl-C, so commands run
    their clean-up (stopping every process they started) instead of dying and orphaning them."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    _interrupt_on_sigterm()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
