"""Realistic synthetic genomic data, per species, for every task, with the best score any model
could reach alongside.

    >>> data = generate(task="promoter", species="human", n=100, seed=0)
    >>> data.records[0].label, data.oracle[0]

What each task plants (matrices and tables from :mod:`common.synthetic.reference`):
- promoter: TSS 3/4 into the window; a TATA box (JASPAR MA0108.2) 26-31 bp upstream in a
  species-dependent fraction of promoters (40-120 bp in yeast; the sigma70 -10/-35 boxes in
  E. coli), CCAAT boxes, GC boxes and a CpG-island background (mammals), Inr/DPE (fly),
  poly(dA:dT) (yeast). Negatives: species background, CpG-island background (mammals) and
  dinucleotide-resampled promoters, some carrying a misplaced promoter element.
- splice: see :mod:`common.synthetic.splice` (donor = last exon base, acceptor = the G of
  the intron's AG, as in common/tasks.py).
- coding: ORFs drawn from the species' codon usage with Kozak (or Shine-Dalgarno) context and
  stops, vs non-coding background with short ORFs, dinucleotide-resampled ORFs, pseudogenes.
- enhancer: clusters of the species' TF motifs vs background with isolated motifs and resampled
  enhancers.

The oracle: sequence tasks flip a fraction ``Difficulty.label_noise`` of labels at random, so no
model can expect to beat the *planted-class oracle*, which knows how each window was generated:
it gives P(label = 1) = 1 - noise for planted positives and noise for negatives (every positive
carries at least one planted element, so its class is in the sequence). For splice the "oracle"
is the site-window posterior of :func:`synthetic_splice.splice_oracle`: a reference point like
MaxEntScan, which models that also read exon/intron context can beat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.data.dataset import Record
from common.synthetic.genome import (
    SPECIES,
    Difficulty,
    Site,
    SpeciesProfile,
    SyntheticError,
    get_species,
    require_task,
    to_string,
)
from common.synthetic.splice import splice_batch
from common.synthetic.tasks import TaskBatch, coding_batch, enhancer_batch, promoter_batch
from common.synthetic.variants import VariantPair, generate_variant_pairs

__all__ = ["DEFAULT_DIFFICULTY", "DEFAULT_LENGTHS", "MIN_LENGTHS", "SPECIES", "Difficulty", "Site",
           "SpeciesProfile", "SyntheticError", "SyntheticSet", "VariantPair", "generate",
           "generate_variant_pairs", "get_species"]

DEFAULT_DIFFICULTY = 0.5
DEFAULT_LENGTHS = {"promoter": 200, "splice": 300, "coding": 200, "enhancer": 200}
MIN_LENGTHS = {"promoter": 170, "splice": 60, "coding": 90, "enhancer": 130}
_SEQUENCE_BATCHES = {"promoter": promoter_batch, "coding": coding_batch, "enhancer": enhancer_batch}


@dataclass(frozen=True)
class SyntheticSet:
    """Generated records plus what the generator knows about them, aligned with ``records``.

    planted: class each window was generated as (before label noise); per-position tasks:
        ``None``. oracle: sequence tasks ``float [n]``, P(label = 1) under the planted-class
        oracle; splice: one ``float32 [L, 3]`` class-probability array per record. origins: the
        generator branch ("promoter", "background", "shuffled", "pseudogene", "gene", ...).
        sites: elements planted in each window (motif ID, start, strand, width).
    """

    task: str
    species: str
    records: list[Record]
    planted: np.ndarray | None
    oracle: np.ndarray | list[np.ndarray]
    origins: list[str]
    sites: list[list[Site]]
    label_noise: float
    params: dict = field(default_factory=dict)

    def oracle_metrics(self) -> dict[str, float]:
        """Sequence tasks: ``accuracy`` and ``mcc`` of the planted-class oracle against the (noisy)
        labels, the best any model can expect. Splice: ``pwm_pr_auc_donor`` / ``pwm_pr_auc_acceptor``,
        average precision of the site-window posterior: a MaxEntScan-like reference that a model
        using exon/intron context can beat, not a ceiling."""
        if self.planted is None:
            return _splice_oracle_metrics(self.records, self.oracle)
        labels = np.array([r.label for r in self.records])
        predicted = (np.asarray(self.oracle) > 0.5).astype(int)
        return {"accuracy": float((predicted == labels).mean()), "mcc": matthews(labels, predicted)}


def matthews(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Matthews correlation of two 0/1 arrays; 0 when either is constant."""
    tp = float(np.sum((predicted == 1) & (labels == 1)))
    tn = float(np.sum((predicted == 0) & (labels == 0)))
    fp = float(np.sum((predicted == 1) & (labels == 0)))
    fn = float(np.sum((predicted == 0) & (labels == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def _splice_oracle_metrics(records: list[Record], oracle: list[np.ndarray]) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    labels = np.concatenate([r.label for r in records])
    scores = np.concatenate(oracle)
    return {f"pwm_pr_auc_{name}": float(average_precision_score(labels == k, scores[:, k]))
            for k, name in ((1, "donor"), (2, "acceptor")) if (labels == k).any()}


def _check_arguments(task: str, n: int, length: int, positive_fraction: float, seed: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise SyntheticError(f"n: expected a positive integer, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SyntheticError(f"seed: expected a non-negative integer, got {seed!r}")
    if not isinstance(length, int) or length < MIN_LENGTHS[task]:
        raise SyntheticError(f"length: the {task} layout needs at least {MIN_LENGTHS[task]} bases, got {length!r}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise SyntheticError(f"positive_fraction: expected a number in [0, 1], got {positive_fraction!r}")


def generate(*, task: str, species: str, n: int, seed: int, length: int | None = None,
             difficulty: float = DEFAULT_DIFFICULTY, positive_fraction: float = 0.5,
             id_prefix: str | None = None) -> SyntheticSet:
    """Generate ``n`` labelled windows of one task for one species.

    Args:
        task: ``"promoter"``, ``"splice"``, ``"coding"`` or ``"enhancer"``.
        species: a key of :data:`SPECIES` (``human``, ``mouse``, ``fruit_fly``, ``yeast``,
            ``e_coli``) or an alias such as ``d_melanogaster``.
        n: number of records.
        seed: seed of the numpy Generator; the same arguments give the same records.
        length: window length in bases (default :data:`DEFAULT_LENGTHS`).
        difficulty: in [0, 1]; see :class:`Difficulty` (label noise, motif sharpness, decoys).
        positive_fraction: share of planted positives (sequence tasks; ignored for splice).
        id_prefix: record IDs are ``f"{id_prefix}{i:06d}"`` (default ``"{species}-{task}-"``).

    Returns:
        A :class:`SyntheticSet`: records in random order, their planted classes, oracle scores,
        origins and planted sites.

    Raises:
        SyntheticError: unknown task or species, a task the species lacks (bacteria have no
            introns; yeast and E. coli no enhancers here), a length below :data:`MIN_LENGTHS`,
            ``n < 1``, a negative seed, or difficulty/positive_fraction outside [0, 1].
    """
    profile = get_species(species)
    require_task(profile, task)
    length = DEFAULT_LENGTHS[task] if length is None else length
    _check_arguments(task, n, length, positive_fraction, seed)
    level = Difficulty(difficulty)
    rng = np.random.default_rng(seed)
    batch = _task_batch(rng, profile, task, n=n, length=length, difficulty=level,
                        positive_fraction=positive_fraction)
    order = rng.permutation(n)
    prefix = f"{profile.name}-{task}-" if id_prefix is None else id_prefix
    if task == "splice":
        return _splice_set(batch, order, profile, prefix, length, level)
    return _sequence_set(rng, batch, order, profile, task, prefix, length, level)


def _task_batch(rng, profile, task, *, n, length, difficulty, positive_fraction) -> TaskBatch:
    if task == "splice":
        return splice_batch(rng, profile, n=n, length=length, difficulty=difficulty)
    n_pos = int(round(n * positive_fraction))
    return _SEQUENCE_BATCHES[task](rng, profile, n_pos=n_pos, n_neg=n - n_pos, length=length,
                                   difficulty=difficulty)


def _params(profile, task, length, level) -> dict:
    return {"task": task, "species": profile.name, "length": length, "difficulty": level.level,
            "label_noise": level.label_noise if task != "splice" else 0.0}


def _sequence_set(rng, batch, order, profile, task, prefix, length, level) -> SyntheticSet:
    flipped = rng.random(batch.planted.size) < level.label_noise
    labels = np.where(flipped, 1 - batch.planted, batch.planted)
    oracle = np.where(batch.planted == 1, 1.0 - level.label_noise, level.label_noise)
    records = [Record(f"{prefix}{i:06d}", to_string(batch.codes[j]), int(labels[j]), profile.name)
               for i, j in enumerate(order)]
    return SyntheticSet(task, profile.name, records, batch.planted[order], oracle[order],
                        [batch.origins[j] for j in order], [batch.sites[j] for j in order],
                        level.label_noise, _params(profile, task, length, level))


def _splice_set(batch, order, profile, prefix, length, level) -> SyntheticSet:
    records = [Record(f"{prefix}{i:06d}", to_string(batch.codes[j]), batch.labels[j].copy(), profile.name)
               for i, j in enumerate(order)]
    return SyntheticSet("splice", profile.name, records, None, [batch.oracle[j] for j in order],
                        [batch.origins[j] for j in order], [batch.sites[j] for j in order], 0.0,
                        _params(profile, "splice", length, level))
