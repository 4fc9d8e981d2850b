"""Read the formats genomics users already have into a :class:`GenomicDataset`.

:func:`load_dataset` detects the format from the path, suffixes matched case-insensitively and an
optional ``.gz`` after them:

* a file ``*.fa``, ``*.fasta``, ``*.fna``: FASTA (:mod:`common.data.readers_fasta`);
* a file ``*.csv``, ``*.tsv``: a table with a header row (:mod:`common.data.readers_table`);
* a file ``*.bed``, with ``reference=``: BED intervals of a reference FASTA (:mod:`common.data.readers_bed`);
* a directory holding ``<split>.csv`` or ``<split>.tsv`` files: the GUE layout (train, dev, test) or
  our generated one (train, val, test); ``split=`` picks the file;
* otherwise a directory whose ``train/`` or ``test/`` holds class folders: the Genomic Benchmarks
  layout (:mod:`common.data.readers_benchmarks`); ``split=`` picks the folder.

``val`` and ``dev`` name the same split. A directory holding a single split needs no ``split=``.
Each reader's module docstring says where it finds ids, labels and species.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.data.dataset import GenomicDataset, Record
from common.data.readers_bed import read_bed
from common.data.readers_benchmarks import BENCHMARK_SPLITS, is_benchmark_directory, read_benchmark_split
from common.data.readers_common import (
    BadSequenceError,
    CompressedFileError,
    DuplicateIdError,
    EmptyFileError,
    FastaFormatError,
    HeaderError,
    IntervalError,
    LabelError,
    MissingFileError,
    ReaderError,
    RowError,
    UnknownChromosomeError,
    UnknownFormatError,
    require_file,
)
from common.data.readers_fasta import read_fasta
from common.data.readers_table import read_table
from common.tasks import get_task

__all__ = [
    "BadSequenceError", "CompressedFileError", "DuplicateIdError", "EmptyFileError", "FastaFormatError",
    "HeaderError", "IntervalError", "LabelError", "MissingFileError", "ReaderError", "RowError",
    "UnknownChromosomeError", "UnknownFormatError", "detect_format", "load_dataset", "read_records",
]

FASTA_SUFFIXES = (".fa", ".fasta", ".fna")
TABLE_SUFFIXES = (".csv", ".tsv")
BED_SUFFIXES = (".bed",)
TABLE_SPLITS = ("train", "val", "dev", "test")
SAME_SPLIT = {"val": "dev", "dev": "val"}

PathLike = str | os.PathLike


def load_dataset(path: PathLike, *, task: str, split: str | None = None, label_file: PathLike | None = None,
                 reference: PathLike | None = None, species: str | None = None,
                 max_len: int | None = None) -> GenomicDataset:
    """Read a dataset file or directory in any supported format (see the module docstring).

    Args:
        path: a FASTA, CSV/TSV or BED file, or a GUE / generated / Genomic Benchmarks directory.
        task: task name from :data:`common.tasks.TASKS`; decides whether labels are one per sequence
            or one per base (``splice``).
        split: for a directory, which split to read (``train``, ``val``/``dev``, ``test``); may be left
            out when the directory holds a single split. Not allowed for a single file.
        label_file: FASTA or BED: a TSV ``id<TAB>label[<TAB>species]`` giving the labels (required for
            per-position tasks, whose label is a string of one class digit per base). Genomic
            Benchmarks: ``class_name<TAB>label`` rows mapping class folders to labels.
        reference: BED only (and required there): the reference FASTA the intervals are cut from.
        species: species of every record that does not name its own.
        max_len: longest sequence allowed, in bases.

    Returns:
        The records, tokenised, in file order; ``dataset.source`` names the file or folder read.

    Raises:
        ValueError: an unknown task, or arguments that do not fit the format (``split`` for a file,
            ``reference`` for anything but BED, ``label_file`` for a table, ``max_len`` < 1, no
            ``split`` for a directory of several splits).
        MissingFileError: the path, label file, reference or requested split does not exist.
        ReaderError: bad content, as one of its subclasses (UnknownFormatError, EmptyFileError,
            HeaderError, FastaFormatError, RowError, BadSequenceError, LabelError, DuplicateIdError,
            IntervalError, UnknownChromosomeError, CompressedFileError); every message names the
            file, the 1-based line or record, what was found and what was expected.
    """
    records, source = _read(Path(path), task=task, split=split, label_file=label_file, reference=reference,
                            species=species, max_len=max_len)
    return GenomicDataset(records, task=task, source=str(source), max_len=max_len)


def read_records(path: PathLike, *, task: str, split: str | None = None, label_file: PathLike | None = None,
                 reference: PathLike | None = None, species: str | None = None,
                 max_len: int | None = None) -> list[Record]:
    """The checked records :func:`load_dataset` would tokenise; same arguments, same errors."""
    return _read(Path(path), task=task, split=split, label_file=label_file, reference=reference,
                 species=species, max_len=max_len)[0]


def _read(path: Path, *, task: str, split: str | None, label_file: PathLike | None,
          reference: PathLike | None, species: str | None, max_len: int | None) -> tuple[list[Record], Path]:
    spec = get_task(task)
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be a positive number of bases, got {max_len}")
    fmt, source = _resolve(path, split)
    _check_arguments(fmt, source, label_file=label_file, reference=reference)
    label_path = require_file(label_file, "label file") if label_file is not None else None
    if fmt == "fasta":
        records = read_fasta(source, task=spec, label_file=label_path, species=species, max_len=max_len)
    elif fmt == "table":
        records = read_table(source, task=spec, species=species, max_len=max_len)
    elif fmt == "bed":
        records = read_bed(source, task=spec, reference=Path(reference), label_file=label_path,
                           species=species, max_len=max_len)
    else:
        records = read_benchmark_split(source, task=spec, label_file=label_path, species=species,
                                       max_len=max_len)
    return records, source


def detect_format(path: PathLike, *, split: str | None = None) -> tuple[str, Path]:
    """The format of ``path`` and the file or folder that will actually be read.

    Returns:
        ``(format, source)``, format one of ``fasta``, ``table``, ``bed``, ``genomic-benchmarks``.

    Raises:
        MissingFileError, UnknownFormatError, ValueError: as for :func:`load_dataset`.
    """
    return _resolve(Path(path), split)


def _resolve(path: Path, split: str | None) -> tuple[str, Path]:
    require_file(path, "dataset file or directory")
    if not path.is_dir():
        if split is not None:
            raise ValueError(f"{path}: split={split!r} applies to dataset directories; this is a single file")
        return _file_format(path), path
    tables = _split_tables(path)
    if tables:
        return "table", _pick_split(path, tables, split)
    if is_benchmark_directory(path):
        folders = {name: path / name for name in BENCHMARK_SPLITS if (path / name).is_dir()}
        return "genomic-benchmarks", _pick_split(path, folders, split)
    raise UnknownFormatError(
        f"{path}: directory holds neither <split>.csv/<split>.tsv files ({', '.join(TABLE_SPLITS)}) nor "
        f"train/ or test/ class folders; expected a GUE, generated or Genomic Benchmarks layout"
    )


def _file_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for fmt, suffixes in (("fasta", FASTA_SUFFIXES), ("table", TABLE_SUFFIXES), ("bed", BED_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    known = ", ".join(FASTA_SUFFIXES + TABLE_SUFFIXES + BED_SUFFIXES)
    raise UnknownFormatError(f"{path}: unknown file type; expected a name ending in one of {known} "
                             f"(optionally followed by .gz)")


def _split_tables(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for split in TABLE_SPLITS:
        candidates = [directory / f"{split}{suffix}{gz}" for suffix in TABLE_SUFFIXES for gz in ("", ".gz")]
        present = [c for c in candidates if c.is_file()]
        if len(present) > 1:
            raise UnknownFormatError(f"{directory}: split {split!r} is in several files "
                                     f"({', '.join(p.name for p in present)}); expected exactly one")
        if present:
            found[split] = present[0]
    return found


def _pick_split(directory: Path, available: dict[str, Path], split: str | None) -> Path:
    if split is None:
        if len(available) == 1:
            return next(iter(available.values()))
        raise ValueError(f"{directory}: holds splits {', '.join(available)}; pass split= to pick one")
    for name in (split, SAME_SPLIT.get(split)):
        if name in available:
            return available[name]
    raise MissingFileError(f"{directory}: no split {split!r}; expected one of {', '.join(available)}")


def _check_arguments(fmt: str, source: Path, *, label_file: PathLike | None,
                     reference: PathLike | None) -> None:
    if fmt == "bed" and reference is None:
        raise ValueError(f"{source}: a BED file needs reference= (the FASTA its intervals are cut from)")
    if fmt != "bed" and reference is not None:
        raise ValueError(f"{source}: reference= applies to BED files only; this is {fmt}")
    if fmt == "table" and label_file is not None:
        raise ValueError(f"{source}: a table carries its own label column; label_file= is for FASTA, "
                         f"BED and Genomic Benchmarks")
