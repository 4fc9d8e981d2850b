"""Building blocks of the synthetic-data generator: species profiles, difficulty, background
models, motif sampling and planting, motif scanning, composition-preserving shuffles.

Sequences are handled as ``uint8`` base codes (A=0, C=1, G=2, T=3), one row per sequence, and
turned into strings only at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import numpy as np

from common.synthetic.reference import (
    AMINO_ACID_PERCENT,
    CODON_USAGE,
    CPG_ISLAND_GC,
    CPG_ISLAND_OBS_EXP,
    GENETIC_CODE,
    GENOME_GC,
    Motif,
)

_LETTERS = np.frombuffer(b"ACGT", dtype=np.uint8)
_CODE_OF = {b: i for i, b in enumerate("ACGT")}
SENSE_CODONS = tuple(c for c, aa in GENETIC_CODE.items() if aa != "*")


class SyntheticError(ValueError):
    """A generator request that cannot be met: unknown species or task, a task the species does not
    have, a length too short for the task's layout, or an out-of-range parameter."""


# --- sequences as codes --------------------------------------------------------------------------
def to_string(codes: np.ndarray) -> str:
    return _LETTERS[codes].tobytes().decode("ascii")


def to_codes(sequence: str) -> np.ndarray:
    return np.array([_CODE_OF[b] for b in sequence.upper()], dtype=np.uint8)


def reverse_complement(codes: np.ndarray) -> np.ndarray:
    return (3 - codes[..., ::-1]).astype(np.uint8)


# --- species -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeciesProfile:
    """What the generator needs to know about one species.

    ``genome_gc`` is the target GC of the background (GENOME_GC in reference.py);
    ``cpg_obs_exp`` the observed/expected CpG ratio of that background (mammalian DNA is
    CpG-depleted by methylation; approximate literature values). ``tata_fraction`` is the
    fraction of generated promoters that carry a TATA box (the -10 box for E. coli).
    """

    name: str
    latin: str
    codon_column: str
    genome_gc: float
    cpg_obs_exp: float
    tasks: tuple[str, ...]
    promoter_style: str  # "mammal", "fly", "yeast" or "bacterium"
    tata_fraction: float
    cpg_island_fraction: float = 0.0  # promoters embedded in a CpG island (mammals)
    ccaat_fraction: float = 0.0
    branch_point: str = "BRANCH-YUNAY"
    enhancer_motifs: tuple[tuple[str, float], ...] = ()  # (motif id, relative use)


_MAMMAL_ENHANCER = (("MA0102.5", 1.0), ("MA0039.5", 1.0), ("MA0079.5", 1.0), ("MA0095.4", 0.7),
                    ("MA0139.2", 0.7))
ALL_TASKS = ("promoter", "splice", "coding", "enhancer")

# TATA fractions: ~20-25 % of human and yeast genes have a TATA box (Yang et al. 2007; Basehoar
# et al. 2004), more in fly core promoters; CpG-island promoters are ~70 % of human/mouse genes
# (Saxonov et al. 2006). Fly enhancers use homologues of the vertebrate factors: slbo (C/EBP),
# Luna (KLF), Pho (YY1), dCTCF. Yeast UASs and bacterial operators are not modelled as enhancers,
# and bacteria have no spliceosomal introns.
SPECIES: dict[str, SpeciesProfile] = {
    "human": SpeciesProfile("human", "Homo sapiens", "h_sapiens_9606", GENOME_GC["h_sapiens"], 0.23,
                            ALL_TASKS, "mammal", tata_fraction=0.2, cpg_island_fraction=0.7,
                            ccaat_fraction=0.3, enhancer_motifs=_MAMMAL_ENHANCER),
    "mouse": SpeciesProfile("mouse", "Mus musculus", "m_musculus_10090", GENOME_GC["m_musculus"], 0.21,
                            ALL_TASKS, "mammal", tata_fraction=0.2, cpg_island_fraction=0.65,
                            ccaat_fraction=0.3, enhancer_motifs=_MAMMAL_ENHANCER),
    "fruit_fly": SpeciesProfile("fruit_fly", "Drosophila melanogaster", "d_melanogaster_7227",
                                GENOME_GC["d_melanogaster"], 0.95, ALL_TASKS, "fly", tata_fraction=0.3,
                                ccaat_fraction=0.15,
                                enhancer_motifs=(("MA0102.5", 1.0), ("MA0039.5", 0.7), ("MA0095.4", 1.0),
                                                 ("MA0139.2", 0.8))),
    "yeast": SpeciesProfile("yeast", "Saccharomyces cerevisiae", "s_cerevisiae_4932",
                            GENOME_GC["s_cerevisiae"], 0.8, ("promoter", "splice", "coding"), "yeast",
                            tata_fraction=0.2, ccaat_fraction=0.15, branch_point="BRANCH-YEAST"),
    "e_coli": SpeciesProfile("e_coli", "Escherichia coli K-12", "e_coli_316407", GENOME_GC["e_coli"], 1.0,
                             ("promoter", "coding"), "bacterium", tata_fraction=0.85),
}
SPECIES_ALIASES = {"h_sapiens": "human", "m_musculus": "mouse", "d_melanogaster": "fruit_fly",
                   "fly": "fruit_fly", "s_cerevisiae": "yeast", "ecoli": "e_coli"}


def get_species(name: str) -> SpeciesProfile:
    """A species profile by name or alias; an unknown name is an error listing the known ones."""
    key = SPECIES_ALIASES.get(name, name)
    if key not in SPECIES:
        raise SyntheticError(f"unknown species {name!r}; known species: {', '.join(SPECIES)} "
                             f"(aliases: {', '.join(SPECIES_ALIASES)})")
    return SPECIES[key]


def require_task(species: SpeciesProfile, task: str) -> None:
    if task not in ALL_TASKS:
        raise SyntheticError(f"unknown task {task!r}; known tasks: {', '.join(ALL_TASKS)}")
    if task not in species.tasks:
        raise SyntheticError(f"species {species.name!r} has no {task!r} data in this generator; "
                             f"its tasks: {', '.join(species.tasks)}")


# --- difficulty ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difficulty:
    """One knob, ``level`` in [0, 1], mapped onto the generator's sources of confusion.

    label_noise: fraction of sequence-task labels flipped (the planted-class oracle's error rate).
    sharpness: exponent applied to motif matrices before sampling; 1.0 at level 0.5 samples the
        published matrices as they are, larger is closer to consensus, smaller closer to uniform.
    element_rate: probability scale for optional elements (promoter elements, cluster size).
    decoy_rate: how often negatives carry isolated motifs / splice windows carry cryptic sites.
    """

    level: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.level, int | float) or not 0.0 <= float(self.level) <= 1.0:
            raise SyntheticError(f"difficulty: expected a number in [0, 1], got {self.level!r}")

    @property
    def label_noise(self) -> float:
        return 0.08 * self.level

    @property
    def sharpness(self) -> float:
        return 1.5 - self.level

    @property
    def element_rate(self) -> float:
        return 1.0 - 0.4 * self.level

    @property
    def decoy_rate(self) -> float:
        return 0.05 + 0.5 * self.level


# --- background models ---------------------------------------------------------------------------
class Markov(NamedTuple):
    """First-order Markov chain over A, C, G, T: ``start [4]`` and ``transition [4, 4]``."""

    start: np.ndarray
    transition: np.ndarray


def _chain(weight_gc: float, cpg_factor: float) -> Markov:
    base = np.array([1 - weight_gc, weight_gc, weight_gc, 1 - weight_gc]) / 2
    transition = np.tile(base, (4, 1))
    transition[1, 2] *= cpg_factor  # C followed by G: the CpG depletion
    transition /= transition.sum(axis=1, keepdims=True)
    eigenvalues, eigenvectors = np.linalg.eig(transition.T)
    stationary = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1))])
    return Markov(stationary / stationary.sum(), transition)


def _bisect(target: float, measure, low: float, high: float) -> float:
    """The x in [low, high] where the increasing function ``measure(x)`` reaches ``target``."""
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if measure(middle) < target else (low, middle)
    return (low + high) / 2


def _chain_with_gc(gc: float, cpg_factor: float) -> Markov:
    weight = _bisect(gc, lambda w: float(_chain(w, cpg_factor).start[1:3].sum()), 0.0, 1.0)
    return _chain(weight, cpg_factor)


def _cpg_obs_exp(chain: Markov) -> float:
    return float(chain.transition[1, 2] / chain.start[2])  # P(CG) / (P(C) P(G))


@cache
def markov_background(gc: float, cpg_obs_exp: float) -> Markov:
    """A chain whose stationary GC is ``gc`` and whose CpG observed/expected is ``cpg_obs_exp``
    (solved by nested bisection, since suppressing CpG also lowers GC)."""
    factor = _bisect(cpg_obs_exp, lambda f: _cpg_obs_exp(_chain_with_gc(gc, f)), 0.0, 4.0)
    return _chain_with_gc(gc, factor)


def species_background(species: SpeciesProfile) -> Markov:
    return markov_background(species.genome_gc, species.cpg_obs_exp)


def cpg_island_background() -> Markov:
    return markov_background(CPG_ISLAND_GC, CPG_ISLAND_OBS_EXP)


def sample_markov(rng: np.random.Generator, chain: Markov, *, n: int, length: int) -> np.ndarray:
    """``uint8 [n, length]`` drawn from one chain."""
    starts = np.broadcast_to(chain.start, (n, 4))
    transitions = np.broadcast_to(chain.transition, (n, 4, 4))
    return _sample_chains(rng, starts, transitions, length)


def _sample_chains(rng: np.random.Generator, starts: np.ndarray, transitions: np.ndarray,
                   length: int) -> np.ndarray:
    """One chain per row: ``starts [n, 4]``, ``transitions [n, 4, 4]`` -> ``uint8 [n, length]``."""
    n = starts.shape[0]
    uniform = rng.random((n, length))
    cumulative = np.cumsum(transitions, axis=2)  # [n, 4, 4]
    out = np.empty((n, length), dtype=np.uint8)
    out[:, 0] = np.minimum((uniform[:, :1] > np.cumsum(starts, axis=1)).sum(axis=1), 3)
    rows = np.arange(n)
    for i in range(1, length):
        thresholds = cumulative[rows, out[:, i - 1]]  # [n, 4]
        out[:, i] = np.minimum((uniform[:, i : i + 1] > thresholds).sum(axis=1), 3)
    return out


def dinucleotide_resample(rng: np.random.Generator, codes: np.ndarray) -> np.ndarray:
    """Redraw each row from a Markov chain fitted to that row's own dinucleotides.

    Keeps each sequence's base and dinucleotide composition (in expectation) while destroying its
    motifs and their positions: negatives that composition alone cannot tell from positives.
    """
    n, length = codes.shape
    pairs = codes[:, :-1].astype(np.int64) * 4 + codes[:, 1:]
    counts = np.zeros((n, 16))
    np.add.at(counts, (np.repeat(np.arange(n), length - 1), pairs.ravel()), 1.0)
    transitions = counts.reshape(n, 4, 4) + 0.25
    transitions /= transitions.sum(axis=2, keepdims=True)
    starts = np.stack([(codes == b).mean(axis=1) for b in range(4)], axis=1) + 1e-3
    starts /= starts.sum(axis=1, keepdims=True)
    return _sample_chains(rng, starts, transitions, length)


# --- motifs --------------------------------------------------------------------------------------
def tempered(motif: Motif, sharpness: float) -> np.ndarray:
    """The motif's probabilities raised to ``sharpness`` and renormalised per column."""
    powered = motif.probabilities ** sharpness
    return powered / powered.sum(axis=0)


def sample_matrix(rng: np.random.Generator, probabilities: np.ndarray, n: int) -> np.ndarray:
    """``n`` independent instances of a position probability matrix ``[4, w]`` -> ``uint8 [n, w]``."""
    cumulative = np.cumsum(probabilities, axis=0)  # [4, w]
    uniform = rng.random((n, probabilities.shape[1], 1))
    return np.minimum((uniform > cumulative.T[None]).sum(axis=2), 3).astype(np.uint8)


class Site(NamedTuple):
    """A planted element: motif ID, 0-based start in the window, strand, and width. A splice site
    cut by the window edge keeps its full extent (``start`` may be negative)."""

    motif: str
    start: int
    strand: str
    width: int


class Occupancy:
    """Which bases of one window already hold a planted element, so elements do not overwrite
    each other."""

    def __init__(self, length: int):
        self.taken = np.zeros(length, dtype=bool)

    def free(self, start: int, width: int) -> bool:
        return start >= 0 and start + width <= self.taken.size and not self.taken[start : start + width].any()

    def take(self, start: int, width: int) -> None:
        self.taken[start : start + width] = True


def plant(row: np.ndarray, instance: np.ndarray, start: int, *, motif_id: str, strand: str,
          occupancy: Occupancy) -> Site:
    """Write ``instance`` (already on the requested strand) into ``row`` at ``start``."""
    width = instance.size
    row[start : start + width] = instance
    occupancy.take(start, width)
    return Site(motif_id, start, strand, width)


def plant_anywhere(rng: np.random.Generator, row: np.ndarray, motif: Motif, *, sharpness: float,
                   occupancy: Occupancy, low: int = 0, high: int | None = None,
                   either_strand: bool = True, tries: int = 20) -> Site | None:
    """Plant one instance of ``motif`` at a free start in ``[low, high)``; None when none is free."""
    high = row.size - motif.width + 1 if high is None else min(high, row.size - motif.width + 1)
    if high <= low:
        return None
    for _ in range(tries):
        start = int(rng.integers(low, high))
        if occupancy.free(start, motif.width):
            instance = sample_matrix(rng, tempered(motif, sharpness), 1)[0]
            strand = "-" if either_strand and rng.random() < 0.5 else "+"
            if strand == "-":
                instance = reverse_complement(instance)
            return plant(row, instance, start, motif_id=motif.id, strand=strand, occupancy=occupancy)
    return None


def best_log_odds(codes: np.ndarray, motif: Motif, background: np.ndarray, *, both_strands: bool = True) -> float:
    """Highest log-odds score (nats) of ``motif`` over every window of ``codes`` (and its reverse
    complement); ``-inf`` if the sequence is shorter than the motif."""
    if codes.size < motif.width:
        return float("-inf")
    scores = motif.log_odds(background)  # [4, w]
    strands = (codes, reverse_complement(codes)) if both_strands else (codes,)
    best = float("-inf")
    for strand in strands:
        windows = np.lib.stride_tricks.sliding_window_view(strand, motif.width)  # [L-w+1, w]
        best = max(best, float(scores[windows, np.arange(motif.width)].sum(axis=1).max()))
    return best


# --- codons --------------------------------------------------------------------------------------
@cache
def codon_frequencies(codon_column: str) -> np.ndarray:
    """Probability of each of the 61 sense codons (order SENSE_CODONS) in a coding sequence:
    amino-acid composition x relative synonymous frequency (normalised within each amino acid)."""
    usage = CODON_USAGE[codon_column]
    totals: dict[str, float] = {}
    for codon in SENSE_CODONS:
        totals[GENETIC_CODE[codon]] = totals.get(GENETIC_CODE[codon], 0.0) + usage[codon]
    weights = np.array([AMINO_ACID_PERCENT[GENETIC_CODE[c]] * usage[c] / totals[GENETIC_CODE[c]]
                        for c in SENSE_CODONS])
    return weights / weights.sum()


_SENSE_CODES = np.array([[_CODE_OF[b] for b in c] for c in SENSE_CODONS], dtype=np.uint8)  # [61, 3]
_STOP_CODES = np.array([[_CODE_OF[b] for b in c] for c in ("TAA", "TAG", "TGA")], dtype=np.uint8)


def sample_codons(rng: np.random.Generator, codon_column: str, *, n: int, n_codons: int) -> np.ndarray:
    """``uint8 [n, 3 * n_codons]`` of sense codons drawn from the species' codon usage."""
    cumulative = np.cumsum(codon_frequencies(codon_column))
    picks = np.minimum(np.searchsorted(cumulative, rng.random((n, n_codons)), side="right"), 60)
    return _SENSE_CODES[picks].reshape(n, 3 * n_codons)


def sample_stop(rng: np.random.Generator, codon_column: str) -> np.ndarray:
    usage = CODON_USAGE[codon_column]
    weights = np.array([usage["TAA"], usage["TAG"], usage["TGA"]])
    return _STOP_CODES[rng.choice(3, p=weights / weights.sum())]


def expected_coding_gc(codon_column: str) -> float:
    """GC fraction of a long ORF drawn by :func:`sample_codons`."""
    gc_per_codon = np.isin(_SENSE_CODES, (1, 2)).mean(axis=1)
    return float(codon_frequencies(codon_column) @ gc_per_codon)
