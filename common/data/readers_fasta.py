"""FASTA reader (``.fa``, ``.fasta``, ``.fna``, each optionally ``.gz``).

Labels come from the header or from a side label file:

* without a label file the header's first word is ``id|label`` or ``id|label|species``
  (anything after the first whitespace is a free-text description and is ignored);
* with a label file the header's first word is the id, taken whole, and the label (and optional
  species) come from the file's ``id<TAB>label[<TAB>species]`` row. Per-position tasks (splice)
  need this form: their label is a string of one class digit per base.

Records may span several lines; blank lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.data.dataset import Record
from common.data.readers_common import (
    EmptyFileError,
    FastaFormatError,
    LabelError,
    Where,
    check_length,
    claim_id,
    first_bad_base,
    line_of,
    numbered_lines,
    parse_labelled_name,
    read_label_file,
    record_from_side_file,
    unknown_base_error,
)
from common.tasks import TaskSpec

HEADER_EXPECTED = "'>id|label' or '>id|label|species' (or '>id' with label_file=)"


@dataclass
class FastaEntry:
    """One FASTA record as read: its header and its sequence lines as ``(line number, text)``."""

    header: str
    header_line: int
    lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def word(self) -> str:
        """The header's first whitespace-delimited word, which holds the id (and maybe label)."""
        return self.header.split()[0]


def fasta_entries(path: Path) -> Iterator[FastaEntry]:
    """Yield the records of a FASTA file in order.

    Raises:
        EmptyFileError: no records at all.
        FastaFormatError: sequence before the first header, an empty header, a header without sequence.
    """
    entry: FastaEntry | None = None
    for line_no, line in numbered_lines(path):
        text = line.strip()
        if not text:
            continue
        if text.startswith(">"):
            if entry is not None:
                yield _complete(entry, path)
            entry = _open_entry(text, path, line_no)
        elif entry is None:
            raise FastaFormatError(
                f"{Where(path, line_no)}: sequence {text[:20]!r} before the first header; "
                f"expected a '>' header line first"
            )
        else:
            entry.lines.append((line_no, text))
    if entry is None:
        raise EmptyFileError(f"{path}: FASTA file holds no records; expected '>' header lines")
    yield _complete(entry, path)


def _open_entry(text: str, path: Path, line_no: int) -> FastaEntry:
    header = text[1:].strip()
    if not header:
        raise FastaFormatError(f"{Where(path, line_no)}: empty header '>'; expected {HEADER_EXPECTED}")
    return FastaEntry(header, line_no)


def _complete(entry: FastaEntry, path: Path) -> FastaEntry:
    if not entry.lines:
        raise FastaFormatError(
            f"{Where(path, entry.header_line, entry.word)}: empty record, no sequence lines follow the "
            f"header; expected at least one line of bases"
        )
    return entry


def read_fasta(path: Path, *, task: TaskSpec, label_file: Path | None, species: str | None,
               max_len: int | None) -> list[Record]:
    """All records of a FASTA file, checked, in file order (see the module docstring for labels).

    Raises:
        LabelError: a per-position task without a label file, or a missing or bad label.
        BadSequenceError, FastaFormatError, EmptyFileError, DuplicateIdError, CompressedFileError.
    """
    if task.per_position and label_file is None:
        raise LabelError(
            f"{path}: FASTA headers cannot carry the per-position labels task {task.name!r} needs; "
            f"expected label_file= with an id<TAB>labels row (one class digit per base) for each record"
        )
    side = read_label_file(label_file) if label_file is not None else None
    records: list[Record] = []
    seen: dict[str, Where] = {}
    for entry in fasta_entries(path):
        sequence = checked_sequence(entry, path, max_len)
        where = Where(path, entry.header_line, entry.word)
        record = (record_from_side_file(entry.word, sequence, side, task, where, species) if side is not None
                  else _from_header(entry, sequence, task, path, species))
        claim_id(seen, record.id, Where(path, entry.header_line))
        records.append(record)
    return records


def checked_sequence(entry: FastaEntry, path: Path, max_len: int | None) -> str:
    """The entry's bases joined, its length and every base checked (errors name file and line)."""
    sequence = "".join(text for _, text in entry.lines)
    check_length(sequence, Where(path, entry.header_line, entry.word), max_len=max_len)
    bad = first_bad_base(sequence)
    if bad is not None:
        raise unknown_base_error(sequence, bad, Where(path, line_of(entry.lines, bad), entry.word))
    return sequence


def _from_header(entry: FastaEntry, sequence: str, task: TaskSpec, path: Path,
                 species: str | None) -> Record:
    where = Where(path, entry.header_line, entry.word)
    record_id, label, header_species = parse_labelled_name(entry.word, task, where)
    return Record(record_id, sequence, label, header_species or species)

