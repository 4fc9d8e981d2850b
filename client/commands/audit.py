"""``helixfed audit``: the privacy audit of one institution (canary exposure, membership inference).

Runs entirely at the institution, on a copy of its data; its own data files and privacy ledger are
only read. See :mod:`client.privacy.canary_audit` for what is planted and measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from client.commands.train import model_and_training
from client.privacy.canary_audit import (
    AUDIT_MODEL,
    CANARY_REPORT_FILE,
    AuditError,
    AuditSettings,
    audit_institution,
    run_name,
)
from common.config import ConfigError, load_institution

console = Console(stderr=True)
DEFAULTS = AuditSettings()


def add_audit_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``audit`` subcommand.

    Args:
        subparsers: the dispatcher's ``add_subparsers()`` object.

    Returns:
        The new subparser (its default ``func`` is :func:`run_audit_command`).
    """
    parser = subparsers.add_parser(
        "audit", help="privacy audit: canary exposure and membership inference, with and without DP",
        description="Plant canaries in a copy of one task's training data, train from the same init without "
                    "DP and with DP at the institution's budget, and report canary exposure and a "
                    "membership-inference AUC. The institution's data and ledger are never written.")
    parser.add_argument("--institution", type=Path, required=True, help="institution YAML")
    parser.add_argument("--canaries", type=int, default=DEFAULTS.canaries, help="canaries planted (and as many "
                        f"never-seen controls; default {DEFAULTS.canaries})")
    parser.add_argument("--repeats", type=int, default=DEFAULTS.repeats,
                        help=f"copies of each canary in the training data (default {DEFAULTS.repeats})")
    parser.add_argument("--epochs", type=float, default=DEFAULTS.epochs,
                        help=f"training epochs of each model (default {DEFAULTS.epochs:g})")
    parser.add_argument("--candidates", type=int, default=DEFAULTS.candidates,
                        help=f"random 12-mers each canary is ranked against (default {DEFAULTS.candidates})")
    parser.add_argument("--task", default=None, help="sequence task to audit (default promoter if held)")
    parser.add_argument("--epsilon", type=float, action="append", default=None,
                        help="DP budget to audit (repeatable; default the institution's own)")
    parser.add_argument("--config", type=Path, default=None,
                        help="federation YAML whose model and training sections to use (default a tiny model)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--out", type=Path, default=Path("runs/audit"),
                        help=f"output directory: data copy, scratch ledgers, {CANARY_REPORT_FILE} (default runs/audit)")
    parser.add_argument("--json", action="store_true", help=f"print {CANARY_REPORT_FILE}'s object to stdout")
    parser.set_defaults(func=run_audit_command)
    return parser


def run_audit_command(args: argparse.Namespace) -> int:
    """Run the audit, print a table (or the JSON object with ``--json``).

    Returns:
        0 on success, 1 when the institution, its data or the settings are unusable (message on stderr).
    """
    try:
        settings = AuditSettings(task=args.task, canaries=args.canaries, repeats=args.repeats, epochs=args.epochs,
                                 candidates=args.candidates, seed=args.seed,
                                 epsilons=tuple(args.epsilon) if args.epsilon else None)
        config = load_institution(args.institution)
        model_config, training, _ = model_and_training(args.config, default_model=AUDIT_MODEL)
        report = audit_institution(config=config, out_dir=args.out, settings=settings, model_config=model_config,
                                   training=training, progress=console.print)
    except (AuditError, ConfigError, ValueError, OSError) as err:
        console.print(f"[red]audit failed:[/red] {err}")
        return 1
    if args.json:
        print(json.dumps(report, indent=1, allow_nan=False))
    else:
        show_report(report)
        console.print(f"report: {args.out / CANARY_REPORT_FILE}")
    return 0


def show_report(report: dict) -> None:
    """One row per model: exposure of planted and never-seen canaries, AUCs."""
    table = Table(title=f"privacy audit: {report['institution']}, {report['task']} "
                        f"({report['settings']['canaries']} canaries x {report['settings']['repeats']} copies, "
                        f"{report['settings']['epochs']:g} epochs)")
    for column in ("model", "σ", "exposure", "ranked 1st", "never-seen", "p", "canary AUC", "MIA AUC"):
        table.add_column(column, no_wrap=True)
    for run in report["runs"]:
        planted, control = run["planted"], run["never_seen"]
        table.add_row(run_name(run), f"{run['noise_multiplier']:.3f}" if run["noise_multiplier"] else "-",
                      f"{planted['exposure_mean']:.2f}/{planted['exposure_max']:.2f}",
                      f"{planted['ranked_first']:.0%}",
                      f"{control['exposure_mean']:.2f}/{control['exposure_max']:.2f}",
                      f"{run['exposure_p_value']:.3f}", f"{run['canary_auc']:.3f}", f"{run['mia_auc']:.3f}")
    Console().print(table)
    console.print(f"exposure (mean/max): log2(N) - log2(rank) among N = {report['settings']['candidates'] + 1} "
                  f"secrets (max {report['max_exposure']:.2f} bits; chance {report['chance_exposure']:.2f}); "
                  "p: one-sided Mann-Whitney, planted > never-seen; AUCs: 0.5 = chance. DP holds per record: "
                  "a canary's copies are a group of records.")
