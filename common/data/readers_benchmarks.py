"""Reader for the Genomic Benchmarks layout: ``<dir>/<split>/<class_name>/<name>.txt``, one sequence
per file (it may wrap over several lines), split being ``train`` or ``test``.

A record's id is ``<class_name>/<name>``: the benchmark numbers its files from 0 inside every class
directory, so the file name alone is not unique. Species comes from the ``species=`` argument.

Class directory names map to labels by the first rule that applies:

1. a label file (``class_name<TAB>label`` per line) given as ``label_file=`` maps them explicitly;
2. names that are all integers (``0``, ``1``) are the labels themselves;
3. with exactly two classes, the one whose name has a word that is ``negative``, ``neg``,
   ``background``, ``intergenic``, ``intergenomic`` or starts with ``non`` (``non_promoter``,
   ``nonTATA``) is 0 and the other is 1 — so ``negative``/``positive`` and
   ``coding_seqs``/``intergenomic_seqs`` both come out right;
4. otherwise, if there are as many classes as the task has, sorted names map to 0, 1, 2, ...
"""

from __future__ import annotations

import re
from pathlib import Path

from common.data.dataset import Record
from common.data.readers_common import (
    EmptyFileError,
    LabelError,
    Where,
    check_length,
    first_bad_base,
    line_of,
    numbered_lines,
    parse_class_label,
    read_label_file,
    unknown_base_error,
)
from common.tasks import TaskSpec

BENCHMARK_SPLITS = ("train", "test")
NEGATIVE_WORDS = frozenset({"negative", "neg", "background", "intergenic", "intergenomic"})


def is_benchmark_directory(directory: Path) -> bool:
    """True when ``directory`` has a ``train`` or ``test`` folder that itself holds class folders."""
    return any(
        (directory / split).is_dir() and any(child.is_dir() for child in (directory / split).iterdir())
        for split in BENCHMARK_SPLITS
    )


def read_benchmark_split(split_dir: Path, *, task: TaskSpec, label_file: Path | None,
                         species: str | None, max_len: int | None) -> list[Record]:
    """Every sequence file under ``split_dir``'s class folders, class by class, files in natural order.

    Raises:
        LabelError: a per-position task, or class names that cannot be mapped to the task's labels.
        EmptyFileError: no class folders, a class folder without ``.txt`` files, or an empty file.
        BadSequenceError, CompressedFileError, MissingFileError (label file).
    """
    if task.per_position:
        raise LabelError(
            f"{split_dir}: Genomic Benchmarks class folders give one label per sequence; task "
            f"{task.name!r} needs per-position labels (expected a TSV with a 'labels' column)"
        )
    class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise EmptyFileError(f"{split_dir}: no class folders; expected {split_dir}/<class_name>/<id>.txt")
    labels = class_labels([d.name for d in class_dirs], task, split_dir, label_file)
    records: list[Record] = []
    for class_dir in class_dirs:
        records.extend(_read_class(class_dir, labels[class_dir.name], species, max_len))
    return records


def class_labels(names: list[str], task: TaskSpec, split_dir: Path,
                 label_file: Path | None) -> dict[str, int]:
    """Map class folder names to labels by the rules in the module docstring."""
    if label_file is not None:
        return _labels_from_file(names, task, label_file)
    if all(name.isdigit() for name in names):
        return {name: parse_class_label(name, task, Where(split_dir / name)) for name in names}
    negatives = [name for name in names if _sounds_negative(name)]
    if len(names) == 2 and len(negatives) == 1:
        return {name: 0 if name == negatives[0] else 1 for name in names}
    if len(names) == task.num_classes:
        return {name: i for i, name in enumerate(sorted(names))}
    raise LabelError(
        f"{split_dir}: {len(names)} class folders {names!r} for task {task.name!r} with "
        f"{task.num_classes} classes; expected {task.num_classes} folders, or label_file= mapping "
        f"class_name<TAB>label"
    )


def _sounds_negative(name: str) -> bool:
    words = [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]
    return any(word in NEGATIVE_WORDS or word.startswith("non") for word in words)


def _labels_from_file(names: list[str], task: TaskSpec, label_file: Path) -> dict[str, int]:
    rows = read_label_file(label_file)
    missing = [name for name in names if name not in rows]
    if missing:
        raise LabelError(
            f"{label_file}: no label for class folder(s) {', '.join(missing)}; "
            f"expected a row class_name<TAB>label for each"
        )
    return {name: parse_class_label(rows[name].text, task, rows[name].where) for name in names}


def _read_class(class_dir: Path, label: int, species: str | None, max_len: int | None) -> list[Record]:
    files = sorted((f for f in class_dir.glob("*.txt") if f.is_file()), key=_natural_key)
    if not files:
        raise EmptyFileError(f"{class_dir}: class folder holds no .txt files; expected one sequence per file")
    return [Record(f"{class_dir.name}/{f.stem}", _read_sequence(f, f"{class_dir.name}/{f.stem}", max_len),
                   label, species) for f in files]


def _natural_key(path: Path) -> tuple[int, int, str]:
    # Benchmark files are numbered 0.txt, 1.txt, ... 10.txt: number order, not string order.
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def _read_sequence(path: Path, record_id: str, max_len: int | None) -> str:
    lines = [(line_no, text.strip()) for line_no, text in numbered_lines(path) if text.strip()]
    if not lines:
        raise EmptyFileError(f"{Where(path, record=record_id)}: empty file; expected one sequence")
    sequence = "".join(text for _, text in lines)
    check_length(sequence, Where(path, lines[0][0], record_id), max_len=max_len)
    bad = first_bad_base(sequence)
    if bad is not None:
        raise unknown_base_error(sequence, bad, Where(path, line_of(lines, bad), record_id))
    return sequence

