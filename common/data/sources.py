"""Data sources an institution names per task in its YAML, read as they are (no conversion step).

```yaml
data:
  promoter:
    bed: tss_windows.bed            # intervals of `reference`, strand-aware
    reference: genome.fa
    window: 200                     # resize every interval to 200 bp around its centre
    negatives: {shuffle: dinucleotide}   # or {flanks: 2000}, or {bed: background.bed}
  enhancer:
    positives: [peaks.fa]           # whole-file labels: every record is the positive class
    negatives: [background.fa]      # ... and every record here the negative class
  coding:   {gue: gue/coding/}      # a GUE folder: train.csv, dev.csv, test.csv
  splice:   {table: splice_sites.tsv}   # a CSV/TSV with sequence and label(s) columns
split: {val: 0.1, test: 0.1, stratify: true, seed: 0, by: chromosome}
```

A source is one of: whole-file labels (``positives``/``negatives``, or ``classes`` for more than two
classes), ``bed`` + ``reference``, ``table``, ``gue``, ``genomic_benchmarks`` or ``directory`` (the
``<dir>/{train,val,test}.tsv`` layout the generator writes). ``gue``, ``genomic_benchmarks`` and
``directory`` come split already; the others are split by ``split`` (:mod:`common.data.importing`).
Every record remembers its chromosome where the source knows it (BED intervals; FASTA ids written
``chr1:100-300`` as ``bedtools getfasta`` writes them), so a split by chromosome can keep each
chromosome in one split. Every error names the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.data.dataset import Record
from common.data.negatives import dinucleotide_shuffle, flank_windows
from common.data.readers import FASTA_SUFFIXES, read_records
from common.data.readers_bed import Interval, fetch, is_skipped_line, open_reference, parse_interval
from common.data.readers_common import (
    IntervalError,
    LabelError,
    UnknownFormatError,
    Where,
    check_sequence,
    claim_id,
    numbered_lines,
    parse_class_label,
    parse_labelled_name,
    require_file,
)
from common.data.readers_fasta import checked_sequence, fasta_entries
from common.tasks import TaskSpec

KINDS = ("positives", "classes", "bed", "table", "gue", "genomic_benchmarks", "directory")
# bedtools getfasta ids: chr1:100-300, optionally with (+) or (-); the chromosome is the group.
COORDINATE_ID = re.compile(r"^(?P<chrom>[^:\s]+):(?P<start>\d+)-(?P<end>\d+)(\([+-]\))?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NegativesSpec(_Strict):
    """Negatives made from the positives: exactly one of ``shuffle``, ``flanks`` or ``bed``."""

    shuffle: Literal["dinucleotide"] | None = None
    per_positive: int = Field(1, ge=1, le=10)  # shuffled copies of every positive
    flanks: int | None = Field(None, ge=0, le=10_000_000)  # distance up- and downstream, in bases
    bed: Path | None = None  # intervals of the same reference

    @model_validator(mode="after")
    def _exactly_one(self) -> NegativesSpec:
        given = [k for k in ("shuffle", "flanks", "bed") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"negatives: give exactly one of shuffle, flanks or bed (got {given or 'none'})")
        return self


class TaskSource(_Strict):
    """Where one task's records come from (see the module docstring)."""

    positives: tuple[Path, ...] = ()
    negatives: tuple[Path, ...] | NegativesSpec | None = None
    classes: dict[str, tuple[Path, ...]] | None = None  # class name (or index) -> FASTA files
    bed: Path | None = None
    reference: Path | None = None
    window: int | None = Field(None, ge=1, le=100_000)
    label: str | None = None  # class of every `bed` interval; default: from the name column (id|label)
    table: Path | None = None
    gue: Path | None = None
    genomic_benchmarks: Path | None = None
    directory: Path | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TaskSource:
        kinds = [k for k in KINDS if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(kinds) or 'none'})")
        kind = kinds[0]
        if self.negatives is not None and kind not in ("positives", "bed"):
            raise ValueError(f"negatives go with positives or bed, not with {kind}")
        if isinstance(self.negatives, NegativesSpec) and (self.negatives.flanks is not None
                                                           or self.negatives.bed is not None) and kind != "bed":
            raise ValueError("negatives: flanks and bed need a bed source with its reference")
        if kind == "positives" and self.negatives is None:
            raise ValueError("positives need negatives: FASTA files, or {shuffle: dinucleotide}")
        if (kind == "bed") != (self.reference is not None):
            raise ValueError("bed and reference go together (the reference FASTA the intervals are cut from)")
        if (self.window is not None or self.label is not None) and kind != "bed":
            raise ValueError("window and label apply to a bed source")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k))

    @property
    def presplit(self) -> bool:
        return self.kind in ("gue", "genomic_benchmarks", "directory")

    def paths(self) -> list[Path]:
        """Every file or folder this source names."""
        named = [getattr(self, k) for k in ("bed", "reference", "table", "gue", "genomic_benchmarks", "directory")]
        named += [*self.positives, *(p for files in (self.classes or {}).values() for p in files)]
        if isinstance(self.negatives, tuple):
            named += list(self.negatives)
        elif isinstance(self.negatives, NegativesSpec) and self.negatives.bed is not None:
            named.append(self.negatives.bed)
        return [p for p in named if p is not None]

    def resolved(self, base: Path) -> TaskSource:
        """Every relative path made absolute against ``base`` (the directory of the file naming it)."""
        def fix(path: Path) -> Path:
            return path if path.is_absolute() else (base / path).resolve()
        updates: dict = {k: fix(getattr(self, k)) for k in
                         ("bed", "reference", "table", "gue", "genomic_benchmarks", "directory") if getattr(self, k)}
        updates["positives"] = tuple(fix(p) for p in self.positives)
        if self.classes:
            updates["classes"] = {name: tuple(fix(p) for p in files) for name, files in self.classes.items()}
        if isinstance(self.negatives, tuple):
            updates["negatives"] = tuple(fix(p) for p in self.negatives)
        elif isinstance(self.negatives, NegativesSpec) and self.negatives.bed is not None:
            updates["negatives"] = self.negatives.model_copy(update={"bed": fix(self.negatives.bed)})
        return self.model_copy(update=updates)


@dataclass
class SourceRecords:
    """What a source gave: records with their chromosome (None where unknown), or ready splits."""

    records: list[Record] = field(default_factory=list)
    chromosomes: list[str | None] = field(default_factory=list)
    splits: dict[str, list[Record]] | None = None  # train / val / test, for pre-split sources

    def add(self, record: Record, chromosome: str | None) -> None:
        self.records.append(record)
        self.chromosomes.append(chromosome)


def read_source(source: TaskSource, task: TaskSpec, *, species: str, seed: int,
                max_len: int | None = None) -> SourceRecords:
    """Read one task's source (paths already resolved).

    Raises:
        ReaderError (a subclass naming file and line), MissingFileError, LabelError for a class
        that the task does not have.
    """
    kind = source.kind
    if kind in ("gue", "genomic_benchmarks", "directory"):
        return _read_presplit(getattr(source, kind), task, species=species, max_len=max_len)
    if kind == "table":
        out = SourceRecords()
        for record in read_records(source.table, task=task.name, species=species, max_len=max_len):
            out.add(record, None)
        return out
    if task.per_position:
        raise LabelError(f"task {task.name!r} has per-base labels; whole-file labels and BED intervals cannot "
                         f"carry them: give a table (sequence, labels) instead")
    rng = np.random.default_rng(seed)
    out = SourceRecords()
    seen: dict[str, Where] = {}
    if kind == "bed":
        _read_bed_source(source, task, out, seen, rng=rng, species=species, max_len=max_len)
        return out
    if kind == "classes":
        for name, files in source.classes.items():
            label = _class_index(name, task, f"data.{task.name}.classes")
            for path in files:
                _read_whole_file(path, label, out, seen, species=species, max_len=max_len)
        return out
    _check_binary(task, "positives/negatives")
    for path in source.positives:
        _read_whole_file(path, 1, out, seen, species=species, max_len=max_len)
    positives_end = len(out.records)
    if isinstance(source.negatives, NegativesSpec):  # only shuffle gets here without a bed source
        _add_shuffled(out, positives_end, source.negatives.per_positive, rng, seen)
    else:
        for path in source.negatives:
            _read_whole_file(path, 0, out, seen, species=species, max_len=max_len)
    return out


def _class_index(name: str, task: TaskSpec, where: str) -> int:
    """A class given by its name (``bound``) or its index (``1``)."""
    if name in task.label_names:
        return task.label_names.index(name)
    return parse_class_label(str(name), task, Where(Path(where)))


def _check_binary(task: TaskSpec, what: str) -> None:
    if task.num_classes != 2:
        raise LabelError(f"task {task.name!r} has {task.num_classes} classes ({', '.join(task.label_names)}); "
                         f"{what} label two; use classes: {{class name: [files]}}")


def _read_presplit(directory: Path, task: TaskSpec, *, species: str, max_len: int | None) -> SourceRecords:
    splits = {}
    for split, names in (("train", ("train",)), ("val", ("val", "dev")), ("test", ("test",))):
        for name in names:
            try:
                splits[split] = read_records(directory, task=task.name, split=name, species=species,
                                             max_len=max_len)
                break
            except FileNotFoundError:
                continue
    if "train" not in splits or "test" not in splits:
        raise UnknownFormatError(f"{directory}: expected a train and a test split (GUE: train.csv, dev.csv, "
                                 f"test.csv; Genomic Benchmarks: train/ and test/ class folders), found "
                                 f"{', '.join(splits) or 'none'}")
    return SourceRecords(splits=splits)


def _read_whole_file(path: Path, label: int, out: SourceRecords, seen: dict[str, Where], *, species: str,
                     max_len: int | None) -> None:
    require_file(path, f"FASTA file of class {label}")
    name = path.name.lower().removesuffix(".gz")
    if not name.endswith(FASTA_SUFFIXES):
        raise UnknownFormatError(f"{path}: whole-file labels read FASTA files; expected a name ending in "
                                 f"{', '.join(FASTA_SUFFIXES)} (optionally .gz)")
    for entry in fasta_entries(path):
        sequence = checked_sequence(entry, path, max_len)
        record_id = entry.word
        claim_id(seen, record_id, Where(path, entry.header_line))
        match = COORDINATE_ID.match(record_id)
        out.add(Record(record_id, sequence, label, species), match["chrom"] if match else None)


def _add_shuffled(out: SourceRecords, positives_end: int, copies: int, rng: np.random.Generator,
                  seen: dict[str, Where]) -> None:
    for i in range(positives_end):
        record, chromosome = out.records[i], out.chromosomes[i]
        for copy in range(copies):
            record_id = f"shuffled:{record.id}:{copy}"
            claim_id(seen, record_id, Where(Path("<dinucleotide shuffle>"), None, record.id))
            out.add(Record(record_id, dinucleotide_shuffle(record.sequence, rng), 0, record.species), chromosome)


def _read_bed_source(source: TaskSource, task: TaskSpec, out: SourceRecords, seen: dict[str, Where], *,
                     rng: np.random.Generator, species: str, max_len: int | None) -> None:
    negatives = source.negatives
    if negatives is not None and source.label is None:
        _check_binary(task, "positives/negatives")
    positive_label = (_class_index(source.label, task, f"data.{task.name}.label")
                      if source.label is not None else (1 if negatives is not None else None))
    with open_reference(source.reference) as genome:
        lengths = {name: len(genome[name]) for name in genome.keys()}
        positives = [_sized(i, source.window, lengths, source.reference) for i in _bed_lines(source.bed)]
        for located in positives:
            _add_interval(genome, located, positive_label, task, out, seen, source, species, max_len)
        if negatives is None:
            return
        if isinstance(negatives, tuple):  # FASTA files of negatives beside the intervals
            for path in negatives:
                _read_whole_file(path, 0, out, seen, species=species, max_len=max_len)
            return
        if negatives.shuffle is not None:
            _add_shuffled(out, len(out.records), negatives.per_positive, rng, seen)
        elif negatives.bed is not None:
            for located in _bed_lines(negatives.bed):
                _add_interval(genome, _sized(located, source.window, lengths, source.reference), 0, task, out,
                              seen, source, species, max_len)
        else:
            spans = [(i.chrom, i.start, i.end) for i, _ in positives]
            for chrom, start, end in flank_windows(spans, lengths, distance=negatives.flanks):
                where = Where(source.bed, None, f"flank {chrom}:{start}-{end}")
                _add_interval(genome, (Interval(chrom, start, end, "", "+"), where), 0, task, out, seen,
                              source, species, max_len)


def _bed_lines(path: Path) -> list[tuple[Interval, Where]]:
    require_file(path, "BED file")
    intervals = [(parse_interval(line, Where(path, line_no), need_name=False), Where(path, line_no))
                 for line_no, line in numbered_lines(path) if not is_skipped_line(line)]
    if not intervals:
        raise IntervalError(f"{path}: BED file holds no intervals")
    return intervals


def _sized(located: tuple[Interval, Where], window: int | None, lengths: dict[str, int],
           reference: Path) -> tuple[Interval, Where]:
    """The interval resized to ``window`` bases around its centre, shifted inside its contig."""
    interval, where = located
    if interval.chrom not in lengths:
        raise IntervalError(f"{where}: chromosome {interval.chrom!r} is not in reference {reference}")
    if window is None:
        return located
    length = lengths[interval.chrom]
    if length < window:
        raise IntervalError(f"{where}: {interval.chrom} is {length} bases long in {reference}, "
                            f"shorter than window {window}")
    start = (interval.start + interval.end) // 2 - window // 2
    start = min(max(start, 0), length - window)  # near a contig end the window shifts inward
    return replace(interval, start=start, end=start + window), where


def _add_interval(genome, located: tuple[Interval, Where], label: int | None, task: TaskSpec,
                  out: SourceRecords, seen: dict[str, Where], source: TaskSource, species: str,
                  max_len: int | None) -> None:
    interval, where = located
    sequence = fetch(genome, interval, where, source.reference)
    strand = "" if interval.strand == "." else f"({interval.strand})"
    record_id = f"{interval.chrom}:{interval.start}-{interval.end}{strand}"
    if label is None:  # labels from the name column, as the plain BED reader reads them
        if not interval.name:
            raise LabelError(f"{where}: no name column to read a label from; expected id|label in column 4, "
                             f"or label: / negatives: in the source")
        record_id, label, _ = parse_labelled_name(interval.name, task, where)
    check_sequence(sequence, Where(where.path, where.line, record_id), max_len=max_len)
    claim_id(seen, record_id, where)
    out.add(Record(record_id, sequence, label, species), interval.chrom)
