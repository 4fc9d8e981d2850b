"""An institution's own files -> train/val/test splits, and the manifest that shows what they hold.

The agent calls :func:`institution_splits` for an institution whose YAML names ``data:`` sources
(:mod:`common.data.sources`); ``helixfed data import`` writes the same splits in the TSV layout with
``manifest.json`` beside them, and ``helixfed data check`` prints the manifest. Reading, splitting
and summarising spend no privacy: nothing here trains or leaves the institution.

Splits (``split:`` in the institution file):

* ``by: random`` (default): stratified by class for sequence tasks (each class keeps its share in
  every split), seeded;
* ``by: chromosome``: whole chromosomes go to one split each, so no locus (and no overlapping
  window) is in both train and test. Needs the chromosome of every record (BED sources, FASTA ids
  like ``chr1:100-300``) and at least as many chromosomes as splits.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.data.dataset import DataError, Record
from common.data.partition import PartitionError, split_train_val_test
from common.data.sources import SourceRecords, TaskSource, read_source
from common.tasks import TaskSpec, get_task

SPLITS = ("train", "val", "test")


class SplitConfig(BaseModel):
    """How records that are not split already are dealt into train, val and test."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, gt=0.0, lt=1.0)
    stratify: bool = True
    seed: int = 0
    by: Literal["random", "chromosome"] = "random"

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test = {self.val + self.test:g} leaves under 10 % for training")
        return self


class SplitError(DataError):
    """Sources that cannot be split as asked (no chromosomes, too few of them, an empty split)."""


def institution_splits(sources: Mapping[str, TaskSource], split: SplitConfig, *, species: str,
                       max_len: int | None = None) -> dict[str, dict[str, list[Record]]]:
    """task -> split -> records, for every task's source (paths resolved)."""
    out = {}
    for offset, (task, source) in enumerate(sources.items()):
        spec = get_task(task)
        read = read_source(source, spec, species=species, seed=split.seed + offset, max_len=max_len)
        try:
            out[task] = _complete_presplit(read.splits, split) if read.splits is not None \
                else split_records(read, split, source=f"data.{task}")
        except PartitionError as err:
            raise SplitError(f"data.{task}: {err}") from err
    return out


def _complete_presplit(splits: dict[str, list[Record]], config: SplitConfig) -> dict[str, list[Record]]:
    if "val" in splits:
        return {name: splits[name] for name in SPLITS}
    # Genomic Benchmarks ships train and test only: validation comes out of train.
    share = config.val / (1.0 - config.test)
    train, val, _ = split_train_val_test(splits["train"], fractions=(1.0 - share, share, 0.0), seed=config.seed)
    return {"train": train, "val": val, "test": splits["test"]}


def split_records(read: SourceRecords, config: SplitConfig, *, source: str) -> dict[str, list[Record]]:
    records = read.records
    if config.by == "chromosome":
        return _split_by_chromosome(records, read.chromosomes, config, source)
    fractions = (1.0 - config.val - config.test, config.val, config.test)
    if config.stratify:
        train, val, test = split_train_val_test(records, fractions=fractions, seed=config.seed)
        return {"train": train, "val": val, "test": test}
    wanted = 1 + (config.val > 0) + (config.test > 0)
    if len(records) < wanted:
        raise SplitError(f"{source}: {len(records)} records cannot fill {wanted} splits")
    order = np.random.default_rng(config.seed).permutation(len(records))
    n_val = max(int(config.val > 0), round(len(records) * config.val))  # a split asked for is never empty
    n_test = max(int(config.test > 0), round(len(records) * config.test))
    pick = lambda idx: [records[i] for i in sorted(idx)]  # noqa: E731 (file order inside a split)
    return {"test": pick(order[:n_test]), "val": pick(order[n_test:n_test + n_val]),
            "train": pick(order[n_test + n_val:])}


def _split_by_chromosome(records: Sequence[Record], chromosomes: Sequence[str | None], config: SplitConfig,
                         source: str) -> dict[str, list[Record]]:
    missing = [r.id for r, c in zip(records, chromosomes, strict=True) if c is None]
    if missing:
        raise SplitError(f"{source}: split.by chromosome needs the chromosome of every record; "
                           f"{len(missing)} have none (first: {missing[0]!r}). BED sources and FASTA ids "
                           f"like chr1:100-300 carry one; otherwise use split.by: random")
    counts = Counter(chromosomes)
    wanted = [name for name in SPLITS if name == "train" or getattr(config, name) > 0]
    if len(counts) < len(wanted):
        raise SplitError(f"{source}: {len(counts)} chromosome(s) ({', '.join(sorted(counts))}) cannot fill "
                           f"{len(wanted)} splits by chromosome; use split.by: random")
    targets = {"train": 1.0 - config.val - config.test, "val": config.val, "test": config.test}
    rng = np.random.default_rng(config.seed)
    names = sorted(counts)
    order = [names[i] for i in rng.permutation(len(names))]
    order.sort(key=lambda c: -counts[c])  # largest first (stable: ties keep the seeded order)
    assigned: dict[str, list[str]] = {name: [] for name in SPLITS}
    filled = dict.fromkeys(SPLITS, 0)
    total = len(records)
    for name in wanted[1:]:  # every held-out split gets at least one chromosome, smallest first
        smallest = order.pop()
        assigned[name].append(smallest)
        filled[name] += counts[smallest]
    for chrom in order:  # then each chromosome goes where the most is missing
        deficit = {name: targets[name] * total - filled[name] for name in wanted}
        name = max(deficit, key=deficit.get)
        assigned[name].append(chrom)
        filled[name] += counts[chrom]
    where = {chrom: name for name, chroms in assigned.items() for chrom in chroms}
    out: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record, chrom in zip(records, chromosomes, strict=True):
        out[where[chrom]].append(record)
    return out


# ---------------------------------------------------------------- manifest


def manifest(splits: Mapping[str, Mapping[str, list[Record]]], *, delta: float | None = None) -> dict:
    """What will be trained on, per task and split: counts per class, lengths, GC, N, and records
    of val/test whose sequence (either strand) is also in train."""
    tasks = {}
    train_records = 0
    for task, by_split in splits.items():
        spec = get_task(task)
        train_seqs = {_canonical(r.sequence) for r in by_split["train"]}
        summary = {name: _summary(records, spec) for name, records in by_split.items()}
        for name in ("val", "test"):
            summary[name]["also_in_train"] = sum(_canonical(r.sequence) in train_seqs for r in by_split[name])
        tasks[task] = summary
        train_records += len(by_split["train"])
    out = {"tasks": tasks, "train_records": train_records}
    if delta is not None:
        out["delta"] = delta
        out["delta_ok"] = train_records > 0 and delta < 1.0 / train_records
    return out


def _canonical(sequence: str) -> str:
    upper = sequence.upper()
    other = upper.translate(str.maketrans("ACGT", "TGCA"))[::-1]
    return min(upper, other)


def _summary(records: list[Record], spec: TaskSpec) -> dict:
    lengths = [len(r.sequence) for r in records]
    joined = "".join(r.sequence.upper() for r in records)
    bases = sum(joined.count(b) for b in "ACGT")
    if spec.per_position:
        counts = np.bincount(np.concatenate([_labelled_bases(r.label) for r in records]) if records else
                             np.zeros(0, dtype=int), minlength=spec.num_classes)
        per_class = {name: int(counts[i]) for i, name in enumerate(spec.label_names)}  # bases per class
    else:
        counts = Counter(int(r.label) for r in records)
        per_class = {name: counts.get(i, 0) for i, name in enumerate(spec.label_names)}
    return {
        "records": len(records),
        "per_class": per_class,
        "length": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)} if lengths
        else None,
        "gc": (joined.count("G") + joined.count("C")) / bases if bases else None,
        "n_fraction": (len(joined) - bases) / len(joined) if joined else None,
    }


def _labelled_bases(label) -> np.ndarray:
    bases = np.asarray(label).ravel()
    return bases[bases >= 0]  # padding positions carry IGNORE_INDEX
