"""`helixfed privacy`: report the privacy an institution has spent, from its ledger."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from client.privacy.ledger import KEY_FILENAME, LEDGER_FILENAME, LedgerError, PrivacyLedger, promote_temp_file

EXIT_OK = 0
EXIT_LEDGER_ERROR = 1


def add_privacy_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `privacy` subcommand.

    Args:
        subparsers: the dispatcher's `add_subparsers()` object.

    Returns:
        The new subparser (its default `func` is `run_privacy`).
    """
    parser = subparsers.add_parser(
        "privacy", help="show the privacy budget an institution has spent",
        description=f"Read the institution's privacy ledger ({LEDGER_FILENAME}) and report ε spent.")
    parser.add_argument("--state-dir", required=True, help="the institution's state directory")
    parser.add_argument("--key-file", type=Path, default=None,
                        help=f"the ledger's key (privacy.ledger_key; default {KEY_FILENAME} in the state directory)")
    parser.add_argument("--json", action="store_true", help="print one machine-readable JSON object")
    parser.add_argument("--promote", metavar="TEMP_FILE", default=None,
                        help="restore a missing ledger from the temp file a crash left (verified first)")
    parser.set_defaults(func=run_privacy)
    return parser


def run_privacy(args: argparse.Namespace) -> int:
    """Print the ledger's summary as a table, or as JSON with `--json`.

    Args:
        args: parsed arguments with `state_dir` and `json`.

    Returns:
        0 on success, 1 when the ledger is missing or unreadable (the error goes to stderr).
    """
    try:
        ledger = (promote_temp_file(args.state_dir, args.promote, key_file=args.key_file) if args.promote
                  else PrivacyLedger.load(args.state_dir, key_file=args.key_file))
    except LedgerError as error:
        print(f"helixfed privacy: {error}", file=sys.stderr)
        return EXIT_LEDGER_ERROR
    summary = ledger_summary(ledger=ledger)
    if args.json:
        print(json.dumps(summary, indent=2, allow_nan=False))
    else:
        _print_tables(summary)
    return EXIT_OK


def ledger_summary(*, ledger: PrivacyLedger) -> dict[str, Any]:
    """The ledger as a JSON-ready object.

    Args:
        ledger: an opened or loaded ledger.

    Returns:
        A dict with `institution`, `accountant`, `epsilon`, `delta`, `budget`, `remaining`,
        `total_steps`, `history` ([σ, q, steps] lists), `rounds` (each with its `segments`, `steps`
        and cumulative `epsilon`), `budget_changes`, and `ledger` (the file's path).
    """
    epsilon = ledger.epsilon()
    return {
        "institution": ledger.institution,
        "accountant": ledger.accountant,
        "epsilon": epsilon,
        "delta": ledger.delta,
        "budget": ledger.budget_epsilon,
        "remaining": max(ledger.budget_epsilon - epsilon, 0.0),
        "total_steps": ledger.total_steps,
        "history": [list(segment) for segment in ledger.history],
        "rounds": [asdict(entry) | {"steps": entry.steps} for entry in ledger.rounds],
        "budget_changes": [asdict(change) for change in ledger.budget_changes],
        "ledger": str(ledger.path),
    }


def _print_tables(summary: dict[str, Any]) -> None:
    console = Console(file=sys.stdout)  # built per call so redirected/captured stdout is honoured
    overview = Table(title=f"privacy spent by {summary['institution']}", show_header=False)
    for name, value in (("ε spent", f"{summary['epsilon']:.4f}"), ("budget ε", f"{summary['budget']:.4f}"),
                        ("remaining ε", f"{summary['remaining']:.4f}"), ("δ", f"{summary['delta']:g}"),
                        ("accountant", summary["accountant"]), ("rounds trained", str(len(summary["rounds"]))),
                        ("DP-SGD steps", str(summary["total_steps"])), ("ledger", summary["ledger"])):
        overview.add_row(name, value)
    console.print(overview)
    if summary["rounds"]:
        console.print(_rounds_table(summary["rounds"]))


def _rounds_table(rounds: list[dict[str, Any]]) -> Table:
    table = Table(title="rounds trained")
    for column in ("run", "round", "steps", "σ", "q", "ε after"):
        table.add_column(column, justify="right")
    for entry in rounds:
        table.add_row(entry["run_id"], str(entry["round"]), str(entry["steps"]),
                      _distinct(sigma for sigma, _, _ in entry["segments"]),
                      _distinct(q for _, q, _ in entry["segments"]), f"{entry['epsilon']:.4f}")
    return table


def _distinct(values) -> str:
    # A multi-task round has one segment per task; show each distinct σ or q once.
    return ", ".join(dict.fromkeys(f"{value:.4g}" for value in values))
