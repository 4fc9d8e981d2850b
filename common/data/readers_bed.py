"""BED reader: intervals cut out of an indexed reference FASTA (pyfaidx builds the ``.fai`` index
beside the reference if it is missing; a compressed reference must be bgzip, as samtools needs).

Columns (whitespace-separated, as BED defines): ``chrom start end name [score [strand ...]]``.

* Coordinates are 0-based and half-open: ``chr1 0 10`` is the first ten bases of chr1.
* The label lives in column 4, ``name``: ``id|label`` or ``id|label|species``. With
  ``label_file=`` the name is the id, taken whole, and the label comes from the file (the only
  way to give per-position labels; such a label string runs along the sequence as returned, i.e.
  after reverse complementing a ``-`` interval). ``score`` is ignored: BED reserves it for display.
* Strand (column 6): ``-`` returns the reverse complement; ``+``, ``.`` or no column the forward strand.
* ``track``/``browser`` lines, ``#`` comments and blank lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyfaidx

from common.data.dataset import Record
from common.data.readers_common import (
    EmptyFileError,
    FastaFormatError,
    IntervalError,
    LabelError,
    RowError,
    SideLabel,
    UnknownChromosomeError,
    Where,
    check_sequence,
    claim_id,
    numbered_lines,
    parse_labelled_name,
    read_label_file,
    record_from_side_file,
    require_file,
    reverse_complement,
)
from common.tasks import TaskSpec

BED_EXPECTED = "chrom<TAB>start<TAB>end<TAB>name[<TAB>score<TAB>strand]"


@dataclass(frozen=True)
class Interval:
    """One BED line: 0-based half-open ``[start, end)`` on ``chrom``."""

    chrom: str
    start: int
    end: int
    name: str
    strand: str


def read_bed(path: Path, *, task: TaskSpec, reference: Path, label_file: Path | None,
             species: str | None, max_len: int | None) -> list[Record]:
    """One record per BED interval, its sequence read from ``reference``, in file order.

    Raises:
        MissingFileError: the reference or label file does not exist.
        FastaFormatError: the reference cannot be indexed.
        IntervalError, UnknownChromosomeError, RowError, LabelError, BadSequenceError,
        DuplicateIdError, EmptyFileError, CompressedFileError.
    """
    if task.per_position and label_file is None:
        raise LabelError(
            f"{path}: BED names cannot carry the per-position labels task {task.name!r} needs; "
            f"expected label_file= with an id<TAB>labels row (one class digit per base) for each interval"
        )
    side = read_label_file(label_file) if label_file is not None else None
    records: list[Record] = []
    seen: dict[str, Where] = {}
    with open_reference(reference) as genome:
        for line_no, line in numbered_lines(path):
            if is_skipped_line(line):
                continue
            where = Where(path, line_no)
            interval = parse_interval(line, where)
            sequence = fetch(genome, interval, where, reference)
            record = _labelled(interval, sequence, side, task, where, species)
            check_sequence(record.sequence, Where(path, line_no, record.id), max_len=max_len)
            claim_id(seen, record.id, where)
            records.append(record)
    if not records:
        raise EmptyFileError(f"{path}: BED file holds no intervals; expected lines {BED_EXPECTED}")
    return records


def is_skipped_line(line: str) -> bool:
    """Blank lines, ``#`` comments and ``track``/``browser`` lines carry no interval."""
    text = line.strip()
    return not text or text.startswith(("#", "track", "browser"))


@contextmanager
def open_reference(reference: Path) -> Iterator[pyfaidx.Fasta]:
    """The reference FASTA, indexed; its ``.fai`` is built beside it when missing or stale."""
    reference = require_file(reference, "reference FASTA")
    try:
        genome = pyfaidx.Fasta(str(reference), as_raw=True, sequence_always_upper=False)
    except (pyfaidx.FastaIndexingError, pyfaidx.UnsupportedCompressionFormat, ValueError) as err:
        raise FastaFormatError(
            f"{reference}: cannot index the reference FASTA ({err}); expected unique record names and "
            f"equal-length sequence lines within each record, plain or bgzip-compressed"
        ) from err
    with genome:
        yield genome


def parse_interval(line: str, where: Where, *, need_name: bool = True) -> Interval:
    """Split and check one BED line (coordinates only; the chromosome is checked by :func:`fetch`).
    ``need_name=False`` also takes a 3-column line (name ``""``): labels then come from elsewhere."""
    fields = line.split()
    if len(fields) < (4 if need_name else 3):
        raise RowError(f"{where}: {len(fields)} fields; expected at least {4 if need_name else 3}: {BED_EXPECTED}")
    start, end = _coordinate(fields[1], "start", where), _coordinate(fields[2], "end", where)
    if end <= start:
        raise IntervalError(f"{where}: end {end} is not after start {start}; expected start < end "
                            f"(0-based, half-open)")
    strand = fields[5] if len(fields) >= 6 else "."
    if strand not in ("+", "-", "."):
        raise IntervalError(f"{where}: strand {strand!r}; expected '+', '-' or '.'")
    return Interval(fields[0], start, end, fields[3] if len(fields) >= 4 else "", strand)


def _coordinate(text: str, what: str, where: Where) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise IntervalError(
            f"{where}: {what} {text!r} is not an integer; expected a 0-based coordinate"
        ) from err
    if value < 0:
        raise IntervalError(f"{where}: {what} {value} is negative; expected a 0-based coordinate >= 0")
    return value


def fetch(genome: pyfaidx.Fasta, interval: Interval, where: Where, reference: Path) -> str:
    """The interval's bases, reverse complemented on the ``-`` strand."""
    if interval.chrom not in genome:
        known = ", ".join(list(genome.keys())[:5])
        raise UnknownChromosomeError(
            f"{where}: chromosome {interval.chrom!r} is not in reference {reference}; "
            f"expected one of its records ({known}{', ...' if len(genome.keys()) > 5 else ''})"
        )
    length = len(genome[interval.chrom])
    if interval.end > length:
        raise IntervalError(
            f"{where}: interval {interval.chrom}:{interval.start}-{interval.end} runs past the end of "
            f"{interval.chrom} (length {length} in {reference}); expected end <= {length}"
        )
    sequence = genome[interval.chrom][interval.start:interval.end]
    return reverse_complement(sequence) if interval.strand == "-" else sequence


def _labelled(interval: Interval, sequence: str, side: dict[str, SideLabel] | None, task: TaskSpec,
              where: Where, species: str | None) -> Record:
    if side is None:
        record_id, label, name_species = parse_labelled_name(interval.name, task, where)
        return Record(record_id, sequence, label, name_species or species)
    return record_from_side_file(interval.name, sequence, side, task, where, species)
