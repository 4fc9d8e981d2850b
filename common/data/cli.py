"""``helixfed data``: an institution's files in, and what they hold out; data for a simulation.

    helixfed data check  --institution inst.yaml              # read, split, summarise; writes nothing
    helixfed data import --institution inst.yaml [--out DIR]  # ... and writes the TSV layout + manifest
    helixfed data synth  --config federation.yaml --out DIR   # generated data (common.synthetic.cli)

``check`` and ``import`` read the institution's ``data:`` sources (or its ``data_dir``), split them
as its ``split:`` section says and print, per task and split, the records per class, lengths, GC
and N content, and how many val/test sequences are also in train; and whether δ < 1/records holds
for the privacy budget. Neither trains, opens the privacy ledger or spends any budget.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.config import ConfigError, load_institution
from common.data.dataset import DataError
from common.data.importing import SPLITS, manifest
from common.data.institution import load_institution_splits
from common.data.writers import write_split_tables
from common.synthetic.cli import add_synth_parser

console = Console()
MANIFEST_FILE = "manifest.json"


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="check or import an institution's files; generate data for a simulated federation")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, help_text in (("check", "read and split an institution's data and summarise it (writes nothing)"),
                            ("import", "read and split an institution's data, write the TSV layout and a "
                                       "manifest")):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--institution", type=Path, required=True, help="institution YAML")
        action.add_argument("--max-len", type=int, default=None, help="longest sequence accepted, in bases")
        if name == "import":
            action.add_argument("--out", type=Path, default=None,
                                help="output directory (default: imported/ beside the institution file)")
        action.set_defaults(func=run_data_command)
    add_synth_parser(actions)


def inspect_institution(institution_file: Path, *, max_len: int | None = None) -> tuple[dict, dict]:
    """(split -> task -> dataset, manifest) for an institution file; spends no privacy."""
    institution = load_institution(institution_file)
    splits = load_institution_splits(institution, max_len=max_len)
    by_task = {task: {split: _records(splits[split][task]) for split in SPLITS} for task in institution.tasks}
    privacy = institution.privacy
    summary = manifest(by_task, delta=privacy.delta if privacy.enabled else None)
    summary["institution"] = institution.name
    summary["species"] = institution.species
    summary["sources"] = ({task: _source_text(source) for task, source in institution.data.items()}
                          if institution.data is not None else {"data_dir": str(institution.data_dir)})
    return by_task, summary


def _source_text(source) -> dict:
    return json.loads(source.model_dump_json(exclude_defaults=True))


def run_data_command(args: argparse.Namespace) -> int:
    try:
        by_task, summary = inspect_institution(args.institution, max_len=args.max_len)
        if args.data_command == "import":
            out = args.out or args.institution.resolve().parent / "imported"
            for task, splits in by_task.items():
                write_split_tables(out / task, splits)
            (out / MANIFEST_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    except (ConfigError, DataError, OSError) as err:
        console.print(f"[red]data {args.data_command} failed:[/red] {err}")
        return 1
    show_manifest(summary)
    if args.data_command == "import":
        console.print(f"wrote {', '.join(by_task)} to {out} (TSV per split; {out / MANIFEST_FILE}); to train on "
                      f"it, set data_dir: {out} in place of data:")
    return 0 if summary.get("delta_ok", True) else 2


def show_manifest(summary: dict) -> None:
    table = Table(title=f"{summary['institution']} ({summary['species']}): what would be trained on")
    for column in ("task", "split", "records", "per class", "length min/median/max", "GC", "N", "also in train"):
        table.add_column(column)
    for task, splits in summary["tasks"].items():
        for split, s in splits.items():
            length = s["length"]
            table.add_row(task, split, str(s["records"]), ", ".join(f"{k} {v}" for k, v in s["per_class"].items()),
                          f"{length['min']}/{length['median']:g}/{length['max']}" if length else "–",
                          _fraction(s["gc"]), _fraction(s["n_fraction"]), str(s.get("also_in_train", "")))
    console.print(table)
    if "delta" in summary:
        records = summary["train_records"]
        verdict = "[green]holds[/green]" if summary["delta_ok"] else "[red]does not hold: lower privacy.delta[/red]"
        console.print(f"delta {summary['delta']:g} < 1/{records} training records: {verdict}")
    console.print("no privacy budget spent: nothing was trained")


def _fraction(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _records(dataset) -> list:
    return [dataset.record(i) for i in range(len(dataset))]
