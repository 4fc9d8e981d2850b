"""Write records in every format :mod:`common.data.readers` reads, so that reading them back gives the
same ids, sequences, labels and species (the generator uses :func:`write_split_tables`).

Every file is written to a temporary name beside it and renamed into place, so an interrupted write
never leaves a half-written file where a good one was. A ``.gz`` suffix writes gzip.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np

from common.data.dataset import Record
from common.data.readers_common import reverse_complement

PathLike = str | os.PathLike


@contextmanager
def _atomic_text(path: PathLike) -> Iterator[TextIO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(temporary, "wt", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def label_text(label: int | np.ndarray) -> str:
    """A sequence label as its integer, a per-position label as one digit per base (``0012000``)."""
    if isinstance(label, np.ndarray):
        return "".join(str(int(value)) for value in label)
    return str(int(label))


def _per_position(records: Sequence[Record]) -> bool:
    kinds = {isinstance(r.label, np.ndarray) for r in records}
    if len(kinds) > 1:
        raise ValueError("records mix per-position and per-sequence labels; expected one kind")
    return kinds == {True}


def _labelled_name(record: Record) -> str:
    """``id|label[|species]``: the FASTA header word and BED name the readers parse."""
    if isinstance(record.label, np.ndarray):
        raise ValueError(f"record {record.id!r}: per-position labels cannot go in a header or BED name; "
                         f"write them with write_label_file")
    for text in (record.id, record.species or ""):
        if "|" in text or any(ch.isspace() for ch in text):
            raise ValueError(f"record {record.id!r}: {text!r} holds '|' or whitespace; expected neither")
    fields = [record.id, label_text(record.label)] + ([record.species] if record.species else [])
    return "|".join(fields)


def _write_fasta_entries(handle: TextIO, entries: Sequence[tuple[str, str]], line_width: int) -> None:
    for header, sequence in entries:
        handle.write(f">{header}\n")
        for start in range(0, len(sequence), line_width):
            handle.write(sequence[start:start + line_width] + "\n")


def write_fasta(records: Sequence[Record], path: PathLike, *, line_width: int = 60,
                labels_in_header: bool = True) -> None:
    """Write records as FASTA, wrapping sequences at ``line_width`` bases.

    Args:
        records: the records.
        path: ``.fa``/``.fasta``/``.fna``, optionally ``.gz``.
        line_width: bases per sequence line.
        labels_in_header: headers ``>id|label[|species]``; False writes ``>id`` only, for use with
            :func:`write_label_file` (the only way for per-position labels).

    Raises:
        ValueError: a label or id that cannot go in a header.
    """
    entries = [(_labelled_name(r) if labels_in_header else r.id, r.sequence) for r in records]
    with _atomic_text(path) as handle:
        _write_fasta_entries(handle, entries, line_width)


def write_label_file(records: Sequence[Record], path: PathLike) -> None:
    """Write the side label file FASTA and BED readers take: header ``id<TAB>label<TAB>species``, then
    one row per record (``labels`` and a digit string per base for per-position records)."""
    column = "labels" if _per_position(records) else "label"
    with _atomic_text(path) as handle:
        handle.write(f"id\t{column}\tspecies\n")
        for r in records:
            handle.write(f"{r.id}\t{label_text(r.label)}\t{r.species or ''}\n")


def write_table(records: Sequence[Record], path: PathLike) -> None:
    """Write a table with columns ``id, species, sequence, label`` (``labels`` for per-position
    records); comma-separated for ``.csv``, tab-separated otherwise."""
    name = Path(path).name.lower().removesuffix(".gz")
    column = "labels" if _per_position(records) else "label"
    with _atomic_text(path) as handle:
        writer = csv.writer(handle, delimiter="," if name.endswith(".csv") else "\t", lineterminator="\n")
        writer.writerow(["id", "species", "sequence", column])
        for r in records:
            writer.writerow([r.id, r.species or "", r.sequence, label_text(r.label)])


def write_split_tables(directory: PathLike, splits: Mapping[str, Sequence[Record]], *,
                       suffix: str = ".tsv") -> dict[str, Path]:
    """Write the generated layout ``<directory>/<split><suffix>`` (e.g. ``train.tsv``, ``val.tsv``,
    ``test.tsv``) and return the path of each split."""
    paths = {split: Path(directory) / f"{split}{suffix}" for split in splits}
    for split, records in splits.items():
        write_table(records, paths[split])
    return paths


def write_genomic_benchmarks(directory: PathLike, splits: Mapping[str, Sequence[Record]], *,
                             class_names: Sequence[str]) -> None:
    """Write the Genomic Benchmarks layout ``<directory>/<split>/<class_names[label]>/<id>.txt``.

    Read back, a record's id is ``<class name>/<id>``; species is not stored.

    Raises:
        ValueError: per-position labels, or an id that cannot be a file name.
    """
    for split, records in splits.items():
        for r in records:
            if isinstance(r.label, np.ndarray) or "/" in r.id or r.id in ("", ".", ".."):
                raise ValueError(
                    f"record {r.id!r}: expected a per-sequence label and an id usable as a file name"
                )
            with _atomic_text(Path(directory) / split / class_names[int(r.label)] / f"{r.id}.txt") as handle:
                handle.write(r.sequence + "\n")


def write_bed(records: Sequence[Record], *, bed_path: PathLike, reference_path: PathLike,
              strands: Sequence[str] | None = None, names_with_labels: bool = True,
              chrom: str = "chr1", spacer: int = 7) -> None:
    """Lay the records end to end on one chromosome of a new reference FASTA and write a BED file of
    their intervals, so that reading the BED against the reference gives the records back.

    Args:
        records: the records.
        bed_path: the BED file to write.
        reference_path: the reference FASTA to write (plain: pyfaidx indexes it on first read).
        strands: ``+``/``-``/``.`` per record (default all ``+``); a ``-`` record is stored reverse
            complemented in the reference.
        names_with_labels: BED names ``id|label[|species]``; False writes the id only, for use with
            :func:`write_label_file`.
        chrom: the chromosome's name.
        spacer: ``N`` bases between records (and at each end), so intervals never touch.

    Raises:
        ValueError: ``strands`` of the wrong length, or a label or id that cannot go in a BED name.
    """
    strands = list(strands) if strands is not None else ["+"] * len(records)
    if len(strands) != len(records):
        raise ValueError(f"{len(strands)} strands for {len(records)} records; expected one per record")
    pieces, lines, offset = ["N" * spacer], [], spacer
    for record, strand in zip(records, strands, strict=True):
        name = _labelled_name(record) if names_with_labels else record.id
        stored = reverse_complement(record.sequence) if strand == "-" else record.sequence
        pieces.append(stored + "N" * spacer)
        lines.append(f"{chrom}\t{offset}\t{offset + len(record.sequence)}\t{name}\t0\t{strand}\n")
        offset += len(record.sequence) + spacer
    with _atomic_text(reference_path) as handle:
        _write_fasta_entries(handle, [(chrom, "".join(pieces))], line_width=60)
    with _atomic_text(bed_path) as handle:
        handle.writelines(lines)
