"""``helixfed baseline``: score the classic baselines on a dataset, with the model's metrics.

    helixfed baseline --data DIR --task TASK [--method kmer|pwm|all] [--k 1-6] [--json]

``DIR`` is an institution folder of the generated layout (``DIR/<task>/{train,val,test}.tsv``) or a
task folder (``DIR/{train,val,test}.tsv``), or any directory :func:`common.data.readers.load_dataset`
reads. The baselines are fitted on ``train`` and scored on ``test`` (or ``val``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import protocol
from common.analysis.baselines import MAX_K, METHODS, applicable_methods, run_baseline
from common.data.dataset import GenomicDataset
from common.data.readers import load_dataset
from common.metrics import metric_keys
from common.tasks import TASK_NAMES, get_task

ALL = "all"
logger = logging.getLogger(__name__)


def _k_value(text: str) -> int:
    """argparse type for ``--k``: an integer in 1..MAX_K."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in 1..{MAX_K}, got {text!r}") from None
    if not 1 <= k <= MAX_K:
        raise argparse.ArgumentTypeError(f"expected an integer in 1..{MAX_K}, got {k}")
    return k


def add_baseline_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``helixfed baseline`` to ``subparsers``; its ``func`` is :func:`run_baseline_command`."""
    parser = subparsers.add_parser(
        "baseline", help="score the classic baselines (k-mer and PWM logistic regressions) on a dataset",
        description="Fit the k-mer and PWM baselines on a dataset's train split and score them on its "
                    "test split with the model's metrics.")
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="institution folder (DIR/<task>/{train,val,test}.tsv) or task folder")
    parser.add_argument("--task", choices=TASK_NAMES, required=True)
    parser.add_argument("--method", choices=(*METHODS, ALL), default=ALL,
                        help="baseline to run (default: every one that applies to the task)")
    parser.add_argument("--k", type=_k_value, default=None, metavar="1-6",
                        help="longest k-mer of the kmer baseline (default 5, splice 3)")
    parser.add_argument("--both-strands", action="store_true",
                        help="kmer on sequence tasks: count each k-mer with its reverse complement")
    parser.add_argument("--eval-split", choices=("test", "val"), default="test",
                        help="split the fitted baselines are scored on (default test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splice models' subsampling")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run_baseline_command)
    return parser


def task_directory(data: Path, task: str) -> Path:
    """``data/<task>`` when that folder exists (an institution folder), else ``data`` itself."""
    nested = data / task
    return nested if nested.is_dir() else data


def run_baseline_command(args: argparse.Namespace) -> int:
    """Run the baselines ``args`` ask for and print their metrics.

    Returns:
        0 on success; 1 when the data cannot be read or a baseline cannot run (the reason is
        printed to stderr).
    """
    directory = task_directory(args.data, args.task)
    methods = applicable_methods(args.task) if args.method == ALL else (args.method,)
    try:
        train = load_dataset(directory, task=args.task, split="train")
        test = load_dataset(directory, task=args.task, split=args.eval_split)
        results = {method: run_baseline(train, test, task=args.task, method=method, k=args.k,
                                        both_strands=args.both_strands, seed=args.seed)
                   for method in methods}
    except (ValueError, OSError) as err:  # reader, dataset and baseline errors all say what and where
        logger.debug("baseline failed", exc_info=True)
        print(f"helixfed baseline: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_report(args.task, train, test, results), indent=2))
    else:
        console = Console()
        console.print(_table(args.task, train, test, results))
        console.print(f"fit on {train.source}\nscored on {test.source}", soft_wrap=True)
    return 0


def _report(task: str, train: GenomicDataset, test: GenomicDataset,
            results: dict[str, dict[str, float]]) -> dict:
    """The JSON form; an undefined metric (nan) is ``null``, as JSON has no NaN."""
    return {
        "task": task,
        "train": {"source": train.source, protocol.NUM_EXAMPLES: len(train)},
        "test": {"source": test.source, protocol.NUM_EXAMPLES: len(test)},
        "results": {method: {name: None if math.isnan(value) else value for name, value in metrics.items()}
                    for method, metrics in results.items()},
    }


def _table(task: str, train: GenomicDataset, test: GenomicDataset,
           results: dict[str, dict[str, float]]) -> Table:
    """One row per metric (so the table fits a narrow terminal), one column per method; the task's
    headline metric in bold."""
    spec = get_task(task)
    names = metric_keys(spec)
    table = Table(title=f"baselines: {task}", caption=f"{len(train)} training, {len(test)} scored")
    table.add_column("metric")
    for method in results:
        table.add_column(method, justify="right")
    for name in names:
        cells = ("n/a" if math.isnan(results[m][name]) else f"{results[m][name]:.3f}" for m in results)
        table.add_row(name, *cells, style="bold" if name == spec.headline_metric else None)
    return table
