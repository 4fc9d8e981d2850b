"""Analysis subcommands: everything a checkpoint can tell, from the command line.

    helixfed evaluate  --checkpoint DIR --data DIR [--task T] [--split test] [--json]
    helixfed predict   --checkpoint DIR --task T --input FILE [--out FILE]
    helixfed variant   --checkpoint DIR --input FILE [--out FILE]
    helixfed attention --checkpoint DIR --sequence SEQ --out FILE.png [--layer L] [--head H] [--task T]
    helixfed motifs    --checkpoint DIR --data DIR [--task T] [--k K] [--top N] [--out FILE.png] [--json]

A checkpoint directory is what :func:`common.checkpoint.save_checkpoint` writes (the server's
``<run>/final/``). Each ``add_*_parser`` function is registered under the ``helixfed.commands``
entry-point group; each command returns 0 on success and 1 when its input cannot be used, with
the reason (file, line, record, position) on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import protocol
from common.analysis.baseline_cli import task_directory
from common.analysis.baselines import KMER, run_baseline
from common.analysis.files import (
    prediction_header,
    prediction_rows,
    read_sequences,
    read_variants,
    variant_header,
    variant_rows,
)
from common.analysis.motifs import DEFAULT_K, DiscoveredMotif, discover_from_attention
from common.analysis.plots import plot_attention, plot_motif_logos
from common.analysis.scoring import (
    attention_entropy,
    attention_maps,
    attention_received,
    predict_sequences,
    require_task,
    score_variants,
    sequence_entropy,
)
from common.checkpoint import load_model
from common.data.dataset import GenomicDataset, Record
from common.data.readers import load_dataset
from common.evaluation import evaluate
from common.logs import progress_bar
from common.metrics import metric_keys
from common.model import GenomicTransformer
from common.tasks import get_task

logger = logging.getLogger(__name__)
ALL_SPECIES = "all"


def _fail(command: str, err: Exception) -> int:
    logger.debug("%s failed", command, exc_info=True)
    print(f"helixfed {command}: error: {err}", file=sys.stderr)
    return 1


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="DIR",
                        help="checkpoint directory (model.safetensors + config.json + checkpoint.json), e.g. <run>/final")


def _open_output(path: Path | None):
    return sys.stdout if path is None else open(path, "w", newline="")  # noqa: SIM115 (closed by caller)


def _write_tsv(path: Path | None, header: list[str], rows) -> None:
    handle = _open_output(path)
    try:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    finally:
        if handle is not sys.stdout:
            handle.close()


# ---------------------------------------------------------------- evaluate


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``helixfed evaluate``: metrics of every task the data holds, per species, beside the k-mer baseline."""
    parser = subparsers.add_parser(
        "evaluate", help="metrics of a checkpoint on every task a dataset holds, with the k-mer baseline",
        description="Score a checkpoint on each task folder of DIR (DIR/<task>/{train,val,test}.tsv, or "
                    "DIR itself with --task), overall and per species, beside the k-mer baseline fitted "
                    "on the train split.")
    _add_checkpoint(parser)
    parser.add_argument("--data", type=Path, required=True, metavar="DIR|FILE",
                        help="a data folder, or one labelled FASTA (>id|label) or CSV/TSV file with --task")
    parser.add_argument("--task", metavar="TASK", action="append",
                        help="evaluate only this task (repeatable; default: every task the data holds)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="split to score (default test)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the k-mer baseline")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=run_evaluate)
    return parser


def tasks_in_data(data: Path, model: GenomicTransformer, requested: list[str] | None) -> list[str]:
    """The model's tasks that ``data`` holds a folder for (or the requested ones).

    Raises:
        ValueError: a requested task the model has no head for, or no task found at all.
    """
    if requested:
        return [require_task(model, task) for task in requested]
    if data.is_file():
        raise ValueError(f"{data}: a single labelled file holds one task; pass --task")
    found = [task for task in model.tasks if (data / task).is_dir()]
    if not found:
        raise ValueError(f"{data}: holds no folder named after a task of this model ({', '.join(model.tasks)}); "
                         f"expected DIR/<task>/{{train,val,test}}.tsv, or pass --task for a single-task folder")
    return found


def _species_subset(dataset: GenomicDataset, species: str) -> GenomicDataset:
    records = [Record(i, s, label.numpy() if label.dim() else int(label), sp)
               for i, s, label, sp in zip(dataset.ids, dataset.sequences, dataset.labels, dataset.species,
                                          strict=True) if (sp or "unknown") == species]
    return GenomicDataset(records, task=dataset.task.name, source=f"{dataset.source} [{species}]")


def _baseline(train: GenomicDataset | None, test: GenomicDataset, task: str) -> dict | None:
    """k-mer baseline metrics, or None with a warning when it cannot be fitted (no or one-class train)."""
    if train is None:
        return None
    try:
        return run_baseline(train, test, task=task, method=KMER)
    except ValueError as err:
        logger.warning("k-mer baseline for %s on %s skipped: %s", task, test.source, err)
        return None


def evaluate_task(model: GenomicTransformer, *, directory: Path, task: str, split: str, baseline: bool,
                  batch_size: int) -> dict:
    """Model (and baseline) metrics of one task: ``{"source", "model", "kmer", "species": {...}}``."""
    max_len = model.config.max_len  # a longer sequence is an error naming its file and line, not a crash
    if directory.is_file():  # one labelled file (FASTA id|label headers, CSV/TSV): no train split, no baseline
        test, train = load_dataset(directory, task=task, max_len=max_len), None
        baseline = False
    else:
        test, train = load_dataset(directory, task=task, split=split, max_len=max_len), None
    if baseline:
        try:
            train = load_dataset(directory, task=task, split="train")
        except FileNotFoundError:
            logger.warning("%s: no train split; the k-mer baseline is skipped for %s", directory, task)
    metrics = evaluate(model, test, batch_size=batch_size, by_species=True)
    per_species = metrics.pop("species")
    report = {"source": test.source, "model": metrics, "kmer": _baseline(train, test, task), "species": {}}
    for species, species_metrics in per_species.items():
        subset = _species_subset(test, species)
        species_metrics[protocol.NUM_EXAMPLES] = len(subset)
        report["species"][species] = {"model": species_metrics, "kmer": _baseline(train, subset, task)}
    return report


def run_evaluate(args: argparse.Namespace) -> int:
    """``helixfed evaluate``; 0 on success, 1 when the checkpoint or data cannot be used."""
    try:
        model, checkpoint = load_model(args.checkpoint)
        tasks = tasks_in_data(args.data, model, args.task)
        reports = {}
        with progress_bar(Console(stderr=True)) as bar:  # stderr: --json output stays clean
            scoring = bar.add_task("evaluating tasks", total=len(tasks))
            for task in tasks:
                reports[task] = evaluate_task(model, directory=args.data if args.data.is_file()
                                              else task_directory(args.data, task), task=task,
                                              split=args.split, baseline=not args.no_baseline,
                                              batch_size=args.batch_size)
                bar.advance(scoring)
    except (ValueError, OSError) as err:
        return _fail("evaluate", err)
    if args.json:
        print(json.dumps(protocol.json_safe({"checkpoint": str(checkpoint.path), "round": checkpoint.round,
                                     "tasks": reports}), indent=2))
        return 0
    console = Console()
    for task, report in reports.items():
        console.print(_metrics_table(task, report))
        console.print(_species_table(task, report))
        console.print(f"scored on {report['source']}", soft_wrap=True)
    return 0


def _cell(metrics: dict | None, name: str) -> str:
    if metrics is None:
        return "n/a"
    value = metrics.get(name, math.nan)
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _metrics_table(task: str, report: dict) -> Table:
    spec = get_task(task)
    table = Table(title=f"{task}: model vs k-mer baseline",
                  caption=f"{report['model'][protocol.NUM_EXAMPLES]} sequences scored")
    for column in ("metric", "model", "kmer"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    names = metric_keys(spec)
    for name in (*names, protocol.LOSS):
        table.add_row(name, _cell(report["model"], name), _cell(report["kmer"], name) if name != protocol.LOSS else "",
                      style="bold" if name == spec.headline_metric else None)
    return table


def _species_table(task: str, report: dict) -> Table:
    spec = get_task(task)
    headline = spec.headline_metric
    table = Table(title=f"{task} per species ({headline} and accuracy)")
    for column in ("species", "n", f"model {headline}", f"kmer {headline}", "model accuracy", "kmer accuracy"):
        table.add_column(column, justify="left" if column == "species" else "right")
    for species, both in report["species"].items():
        table.add_row(species, str(both["model"][protocol.NUM_EXAMPLES]), _cell(both["model"], headline),
                      _cell(both["kmer"], headline), _cell(both["model"], protocol.ACCURACY),
                      _cell(both["kmer"], protocol.ACCURACY))
    return table


# ---------------------------------------------------------------- predict and variant


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``helixfed predict``: a TSV of class probabilities and the predicted label."""
    parser = subparsers.add_parser(
        "predict", help="class probabilities for the sequences of a FASTA or table file (TSV out)",
        description="Write id, one probability per class and the most probable label for each sequence "
                    "(for splice: one row per base, with its 1-based position and base).")
    _add_checkpoint(parser)
    parser.add_argument("--task", metavar="TASK", required=True)
    parser.add_argument("--input", type=Path, required=True, metavar="FILE",
                        help="FASTA, or CSV/TSV with a 'sequence' column (and optionally 'id')")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="TSV file (default stdout)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.set_defaults(func=run_predict)
    return parser


def run_predict(args: argparse.Namespace) -> int:
    """``helixfed predict``; 0 on success, 1 on an unusable checkpoint, task or input."""
    try:
        model, _ = load_model(args.checkpoint)
        require_task(model, args.task)
        records = read_sequences(args.input, max_len=model.config.max_len)
        ids, sequences = [r[0] for r in records], [r[1] for r in records]
        probabilities = predict_sequences(model, sequences=sequences, task=args.task, batch_size=args.batch_size)
        _write_tsv(args.out, prediction_header(args.task),
                   prediction_rows(args.task, ids=ids, sequences=sequences, probabilities=probabilities))
    except (ValueError, OSError) as err:
        return _fail("predict", err)
    return 0


def add_variant_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``helixfed variant``: impact scores of reference/alternative pairs."""
    parser = subparsers.add_parser(
        "variant", help="impact scores for a TSV of id, ref, alt (SNVs and small indels)",
        description="For each pair: the change in each task's probability, the change in last-layer "
                    "attention (aligned around indels), a signed score, an impact in [0, 1] and a "
                    "high/low label (see common.analysis.scoring.HIGH_IMPACT_THRESHOLD).")
    _add_checkpoint(parser)
    parser.add_argument("--input", type=Path, required=True, metavar="FILE",
                        help="CSV/TSV with columns id, ref, alt and optionally task")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="TSV file (default stdout)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.set_defaults(func=run_variant)
    return parser


def run_variant(args: argparse.Namespace) -> int:
    """``helixfed variant``; 0 on success, 1 on an unusable checkpoint or input."""
    try:
        model, _ = load_model(args.checkpoint)
        variants = read_variants(args.input, max_len=model.config.max_len)
        impacts = score_variants(model, variants=variants, batch_size=args.batch_size)
        _write_tsv(args.out, variant_header(model.tasks), variant_rows(impacts, model.tasks))
    except (ValueError, OSError) as err:
        return _fail("variant", err)
    return 0


# ---------------------------------------------------------------- attention


def add_attention_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``helixfed attention``: the attention figure of one sequence."""
    parser = subparsers.add_parser(
        "attention", help="attention heatmap and per-position attention of one sequence (PNG)",
        description="Draw one layer's attention (one head, or the mean over heads) with the bases on both "
                    "axes, the attention each position receives, and each query's entropy.")
    _add_checkpoint(parser)
    parser.add_argument("--sequence", required=True, metavar="SEQ")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.png")
    parser.add_argument("--layer", type=int, default=-1, help="0-based layer, negative from the end (default -1: last)")
    parser.add_argument("--head", type=int, default=None, help="0-based head (default: mean over heads)")
    parser.add_argument("--task", metavar="TASK", default=None,
                        help="head whose prediction is shown in the title (default: the model's first)")
    parser.set_defaults(func=run_attention)
    return parser


def run_attention(args: argparse.Namespace) -> int:
    """``helixfed attention``; 0 on success, 1 on a bad checkpoint, sequence, layer or head."""
    try:
        model, _ = load_model(args.checkpoint)
        task = require_task(model, args.task or model.tasks[0])
        maps = attention_maps(model, sequence=args.sequence, task=task)
        weights = maps.select(layer=args.layer, head=args.head)
        title = _attention_title(model, args.sequence, task)
        plot_attention(maps, path=args.out, layer=args.layer, head=args.head, title=title)
    except (ValueError, OSError) as err:
        return _fail("attention", err)
    received = attention_received(weights)
    top = received.argsort()[::-1][:5]
    print(f"wrote {args.out}")
    print(f"sequence entropy: {sequence_entropy(args.sequence):.3f} bits per base")
    print(f"attention entropy: mean {attention_entropy(weights).mean():.3f} bits "
          f"(uniform would be {math.log2(len(maps.tokens)):.3f})")
    print("most attended: " + ", ".join(f"{maps.tokens[i]}@{i + 1} ({received[i]:.3f})" for i in top))
    return 0


def _attention_title(model: GenomicTransformer, sequence: str, task: str) -> str:
    probabilities = predict_sequences(model, sequences=[sequence], task=task)[0]
    spec = get_task(task)
    if spec.per_position:
        return f"{len(sequence)} bp; {task}: per-base predictions not shown"
    best = int(probabilities.argmax())
    return f"{len(sequence)} bp; {task}: {spec.label_names[best]} (p = {probabilities[best]:.2f})"


# ---------------------------------------------------------------- motifs


def add_motifs_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``helixfed motifs``: motif discovery from attention, with a logo plot."""
    parser = subparsers.add_parser(
        "motifs", help="the k-mers attention keeps returning to, their enrichment and closest known motif",
        description="Take each sequence's most attended k-mer window (positives of the task by default), "
                    "test each k-mer's enrichment against all k-mers of those sequences, and match it to "
                    "the reference motif matrices (JASPAR, splice sites).")
    _add_checkpoint(parser)
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="DIR/<task>/{train,val,test}.tsv, a task folder, or a data file")
    parser.add_argument("--task", metavar="TASK", default=None,
                        help="task whose sequences are read (default promoter if the model has it)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--all-labels", action="store_true", help="use every sequence, not only positives")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"k-mer length (default {DEFAULT_K})")
    parser.add_argument("--top", type=int, default=10, help="motifs reported (default 10)")
    parser.add_argument("--layer", type=int, default=-1, help="attention layer (default -1: last)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE.png", help="sequence-logo plot")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run_motifs)
    return parser


def _motif_sequences(args: argparse.Namespace, model: GenomicTransformer) -> tuple[list[str], str]:
    task = args.task or ("promoter" if "promoter" in model.tasks else model.tasks[0])
    path = task_directory(args.data, task) if args.data.is_dir() else args.data
    dataset = load_dataset(path, task=task, split=args.split if path.is_dir() else None)
    if args.all_labels or get_task(task).per_position:
        return dataset.sequences, dataset.source
    positives = [s for s, label in zip(dataset.sequences, dataset.labels, strict=True) if int(label) != 0]
    if not positives:
        raise ValueError(f"{dataset.source}: no positive ({get_task(task).label_names[1]}) sequences; "
                         f"pass --all-labels to use every sequence")
    return positives, dataset.source


def run_motifs(args: argparse.Namespace) -> int:
    """``helixfed motifs``; 0 on success, 1 on a bad checkpoint, data or parameter."""
    try:
        model, _ = load_model(args.checkpoint)
        sequences, source = _motif_sequences(args, model)
        motifs = discover_from_attention(model, sequences=sequences, k=args.k, layer=args.layer, top=args.top)
        if args.out is not None and motifs:
            plot_motif_logos(motifs, path=args.out)
    except (ValueError, OSError) as err:
        return _fail("motifs", err)
    if args.json:
        print(json.dumps(protocol.json_safe({"source": source, "sequences": len(sequences),
                                     "motifs": [_motif_json(m) for m in motifs]}), indent=2))
    else:
        Console().print(_motif_table(motifs, source, len(sequences)))
    if not motifs:
        print("no k-mer was attended often enough to test; try more sequences or a smaller --k", file=sys.stderr)
    return 0


def _motif_json(motif: DiscoveredMotif) -> dict:
    match = motif.match
    return {"kmer": motif.kmer, "attended": motif.attended, "background": motif.background,
            "log2_enrichment": motif.log2_enrichment, "p_value": motif.p_value,
            "matrix": motif.matrix.round(4).tolist(),
            "match": None if match is None else {"motif_id": match.motif_id, "name": match.name,
                                                 "similarity": match.similarity, "offset": match.offset,
                                                 "strand": match.strand}}


def _motif_table(motifs: list[DiscoveredMotif], source: str, n_sequences: int) -> Table:
    table = Table(title="motifs from attention", caption=f"{n_sequences} sequences of {source}")
    for column in ("k-mer", "attended", "background", "log2 enrichment", "p (Bonferroni)", "closest known", "r"):
        table.add_column(column, justify="left" if column in ("k-mer", "closest known") else "right")
    for m in motifs:
        known = "" if m.match is None else f"{m.match.motif_id} {m.match.name} ({m.match.strand})"
        similarity = "" if m.match is None else f"{m.match.similarity:.2f}"
        table.add_row(m.kmer, str(m.attended), str(m.background), f"{m.log2_enrichment:.2f}",
                      f"{m.p_value:.2g}", known, similarity)
    return table
