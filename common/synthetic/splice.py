"""Splice-site windows with one label per base.

Labels (common/tasks.py, "splice"): 0 neither, 1 donor, 2 acceptor.
- **donor** = the last exon base, immediately 5' of the intron's G-T (so ``seq[i+1:i+3] == "GT"``);
- **acceptor** = the last intron base, the G of the intron's closing A-G (so ``seq[i-1:i+1] == "AG"``).

A window is a stretch of a gene: exons (codons from the species' codon usage), introns (species
background), donors and acceptors drawn from the human splice-site matrices (GT and AG forced:
only canonical GT-AG introns are generated), a branch point 27-40 nt upstream of each 3' splice
site, the polypyrimidine tract the acceptor matrix carries, and cryptic sites (the same matrices,
drawn weaker) that are labelled 0. Every GT/AG away from a boundary is a natural decoy.
"""

from __future__ import annotations

import numpy as np

from common.synthetic.genome import (
    Difficulty,
    Occupancy,
    Site,
    SpeciesProfile,
    sample_codons,
    sample_markov,
    sample_matrix,
    species_background,
    tempered,
)
from common.synthetic.reference import ACCEPTOR, ACCEPTOR_INTRON_BASES, DONOR, DONOR_EXON_BASES, get_motif
from common.synthetic.tasks import TaskBatch

NEITHER, DONOR_LABEL, ACCEPTOR_LABEL = 0, 1, 2
EXON_LENGTH = (50, 150)    # internal exons; the window shows a stretch of a gene
INTRON_LENGTH = (80, 250)  # long enough for donor, branch point, tract and acceptor
CRYPTIC_SHARPNESS = 0.75   # cryptic sites are drawn from flatter matrices than real ones
_EDGE = 2                  # a boundary needs its label base and its GT/AG inside the window


def canonical(probabilities: np.ndarray, columns: dict[int, int]) -> np.ndarray:
    """Fix matrix ``columns`` (column -> base code) to one base: canonical GT-AG introns."""
    fixed = probabilities.copy()
    for column, base in columns.items():
        fixed[:, column] = np.eye(4)[base]
    return fixed


def donor_matrix(sharpness: float) -> np.ndarray:
    return canonical(tempered(DONOR, sharpness), {DONOR_EXON_BASES: 2, DONOR_EXON_BASES + 1: 3})


def acceptor_matrix(sharpness: float) -> np.ndarray:
    return canonical(tempered(ACCEPTOR, sharpness), {ACCEPTOR_INTRON_BASES - 2: 0, ACCEPTOR_INTRON_BASES - 1: 2})


def _layout(rng: np.random.Generator, length: int) -> tuple[bool, list[int]]:
    """Whether the window starts in an exon, and the indices where each next segment starts."""
    in_exon = bool(rng.random() < 0.5)
    state, position, boundaries = in_exon, -int(rng.integers(0, EXON_LENGTH[1])), []
    while position < length:
        low, high = EXON_LENGTH if state else INTRON_LENGTH
        position += int(rng.integers(low, high + 1))
        if position <= 0:
            in_exon = not in_exon  # this boundary lies before the window
        elif position < length:
            boundaries.append(position)
        state = not state
    # a boundary too close to an edge moves out of the window (the segment simply continues)
    while boundaries and boundaries[0] < _EDGE:
        boundaries.pop(0)
        in_exon = not in_exon
    while boundaries and boundaries[-1] > length - _EDGE:
        boundaries.pop()
    return in_exon, boundaries


def _write(row: np.ndarray, instance: np.ndarray, start: int) -> None:
    """Write the part of ``instance`` that falls inside the window."""
    low, high = max(start, 0), min(start + instance.size, row.size)
    row[low:high] = instance[low - start : high - start]


def _fill_segments(row, exon_codes, in_exon, boundaries) -> np.ndarray:
    """Exons get coding sequence (in some frame), introns keep the background already in ``row``."""
    exonic = np.zeros(row.size, dtype=bool)
    edges = [0, *boundaries, row.size]
    for i, (begin, end) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if (i % 2 == 0) == in_exon:
            exonic[begin:end] = True
            row[begin:end] = exon_codes[begin:end]
    return exonic


def _plant_sites(rng, row, labels, exonic, boundaries, species, sharpness) -> list[Site]:
    sites = []
    for b in boundaries:
        if exonic[b - 1]:  # exon -> intron: donor; label the last exon base
            _write(row, sample_matrix(rng, donor_matrix(sharpness), 1)[0], b - DONOR_EXON_BASES)
            labels[b - 1] = DONOR_LABEL
            sites.append(Site(DONOR.id, b - DONOR_EXON_BASES, "+", DONOR.width))
        else:  # intron -> exon: acceptor; label the G that ends the intron
            _write(row, sample_matrix(rng, acceptor_matrix(sharpness), 1)[0], b - ACCEPTOR_INTRON_BASES)
            labels[b - 1] = ACCEPTOR_LABEL
            sites.append(Site(ACCEPTOR.id, b - ACCEPTOR_INTRON_BASES, "+", ACCEPTOR.width))
            sites.extend(_branch_point(rng, row, b, species, sharpness))
    return sites


def _branch_point(rng, row, acceptor_boundary, species, sharpness) -> list[Site]:
    """The branch point just upstream of the acceptor matrix window: its A 27-40 nt before the 3'ss."""
    motif = get_motif(species.branch_point)
    end = acceptor_boundary - ACCEPTOR_INTRON_BASES - int(rng.integers(0, 10))
    start = end - motif.width
    if start < 0:
        return []
    row[start:end] = sample_matrix(rng, tempered(motif, sharpness), 1)[0]
    return [Site(motif.id, start, "+", motif.width)]


def _plant_cryptic(rng, row, boundaries, decoy_rate, sharpness) -> list[Site]:
    """Cryptic donors and acceptors (labelled neither) at least 12 bp from any real boundary."""
    occ = Occupancy(row.size)
    for b in boundaries:
        occ.take(max(b - 40, 0), 52)
    sites = []
    for _ in range(rng.poisson(1.5 * decoy_rate)):
        is_donor = rng.random() < 0.5
        motif, matrix = (DONOR, donor_matrix) if is_donor else (ACCEPTOR, acceptor_matrix)
        start = int(rng.integers(0, row.size - motif.width + 1))
        if occ.free(start, motif.width):
            row[start : start + motif.width] = sample_matrix(rng, matrix(sharpness * CRYPTIC_SHARPNESS), 1)[0]
            occ.take(start, motif.width)
            sites.append(Site(f"CRYPTIC-{motif.id}", start, "+", motif.width))
    return sites


def splice_batch(rng, species: SpeciesProfile, *, n: int, length: int, difficulty: Difficulty) -> TaskBatch:
    """``n`` gene windows with per-base labels and the local-window oracle (see module docstring)."""
    codes = sample_markov(rng, species_background(species), n=n, length=length)
    exons = sample_codons(rng, species.codon_column, n=n, n_codons=length // 3 + 2)
    labels = np.zeros((n, length), dtype=np.int64)
    all_sites, origins = [], []
    for row, label_row, exon_row in zip(codes, labels, exons, strict=True):
        in_exon, boundaries = _layout(rng, length)
        frame = int(rng.integers(0, 3))
        exonic = _fill_segments(row, exon_row[frame : frame + length], in_exon, boundaries)
        sites = _plant_sites(rng, row, label_row, exonic, boundaries, species, difficulty.sharpness)
        sites += _plant_cryptic(rng, row, boundaries, difficulty.decoy_rate, difficulty.sharpness)
        all_sites.append(sites)
        origins.append("gene")
    batch = TaskBatch(codes, labels, labels.copy(), origins, all_sites)
    batch.oracle = splice_oracle(codes, labels, all_sites, species, difficulty)
    return batch


# --- oracle --------------------------------------------------------------------------------------
def _window_log_ratio(codes, matrix, background, offset) -> np.ndarray:
    """Log likelihood ratio (matrix vs background) of the window starting ``offset`` bases before
    each position; columns falling outside the sequence count as 0. -> ``[n, L]``."""
    n, length = codes.shape
    log_ratio = np.log(np.maximum(matrix, 1e-300)) - np.log(background)[:, None]  # [4, w]; forced columns hold 0
    total = np.zeros((n, length))
    for column in range(matrix.shape[1]):
        shift = column - offset  # base at i + shift
        source = np.arange(length) + shift
        inside = (source >= 0) & (source < length)
        total[:, inside] += log_ratio[codes[:, source[inside]], column]
    return total


def _posterior(log_true, log_cryptic, candidate, n_true, n_cryptic) -> np.ndarray:
    """P(real site | window) among candidate positions, mixing real, cryptic and chance windows."""
    n_chance = max(int(candidate.sum()) - n_true - n_cryptic, 1)
    true_term = n_true * np.exp(log_true)
    cryptic_term = n_cryptic * np.exp(log_cryptic)
    return np.where(candidate, true_term / (true_term + cryptic_term + n_chance), 0.0)


def splice_oracle(codes, labels, sites, species, difficulty) -> np.ndarray:
    """``float32 [n, L, 3]``: the Bayes posterior of each class given only the donor (9-base) or
    acceptor (27-base) window around a base, under the generator's own real-site, cryptic-site and
    background distributions (mononucleotide background). It ignores exon/intron context, so it
    is a reference point (like MaxEntScan), not a ceiling."""
    background = species_background(species).start
    sharp = difficulty.sharpness
    cryptic = [s.motif for row in sites for s in row if s.motif.startswith("CRYPTIC-")]
    next_two = np.pad(codes, ((0, 0), (0, 2)), constant_values=9)
    previous = np.pad(codes, ((0, 0), (1, 0)), constant_values=9)[:, :-1]
    donor_candidate = (next_two[:, 1:-1] == 2) & (next_two[:, 2:] == 3)
    acceptor_candidate = (previous == 0) & (codes == 2)
    offsets = (DONOR_EXON_BASES - 1, ACCEPTOR_INTRON_BASES - 1)
    donor = _posterior(_window_log_ratio(codes, donor_matrix(sharp), background, offsets[0]),
                       _window_log_ratio(codes, donor_matrix(sharp * CRYPTIC_SHARPNESS), background, offsets[0]),
                       donor_candidate, int((labels == DONOR_LABEL).sum()), cryptic.count(f"CRYPTIC-{DONOR.id}"))
    acceptor = _posterior(_window_log_ratio(codes, acceptor_matrix(sharp), background, offsets[1]),
                          _window_log_ratio(codes, acceptor_matrix(sharp * CRYPTIC_SHARPNESS), background,
                                            offsets[1]),
                          acceptor_candidate, int((labels == ACCEPTOR_LABEL).sum()),
                          cryptic.count(f"CRYPTIC-{ACCEPTOR.id}"))
    total = np.maximum(donor + acceptor, 1.0)  # a base can (rarely) be a candidate for both
    donor, acceptor = donor / total, acceptor / total
    return np.stack([1.0 - donor - acceptor, donor, acceptor], axis=-1).astype(np.float32)
