"""Sequence-level tasks of the generator: promoter, enhancer, coding.

Each ``*_batch`` function returns a :class:`TaskBatch` of positives followed by negatives, with
the planted class of every window (before any label noise, which :mod:`synthetic` applies), where
each negative came from, and the elements planted in it. Positions are 0-based window indices;
``tss`` is the index of the transcription start site (+1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.synthetic.genome import (
    Difficulty,
    Occupancy,
    Site,
    SpeciesProfile,
    cpg_island_background,
    dinucleotide_resample,
    plant,
    plant_anywhere,
    reverse_complement,
    sample_codons,
    sample_markov,
    sample_matrix,
    sample_stop,
    species_background,
    tempered,
)
from common.synthetic.reference import get_motif


@dataclass
class TaskBatch:
    """Generated windows before label noise and shuffling.

    codes: ``uint8 [n, L]``; labels: ``int64 [n]`` (or ``[n, L]`` per position); planted: the
    class each window was generated as (``int64 [n]``; per-position tasks: same as labels);
    origins: the generator branch of each window; sites: planted elements per window; oracle:
    per-position tasks only, ``float32 [n, L, classes]`` (sequence tasks get theirs from the
    label noise in :mod:`synthetic`).
    """

    codes: np.ndarray
    labels: np.ndarray
    planted: np.ndarray
    origins: list[str]
    sites: list[list[Site]]
    oracle: np.ndarray | None = None


def _concat(positives: TaskBatch, negatives: TaskBatch) -> TaskBatch:
    return TaskBatch(np.concatenate([positives.codes, negatives.codes]),
                     np.concatenate([positives.labels, negatives.labels]),
                     np.concatenate([positives.planted, negatives.planted]),
                     positives.origins + negatives.origins, positives.sites + negatives.sites)


def _batch(codes: np.ndarray, label: int, origins: list[str], sites: list[list[Site]]) -> TaskBatch:
    labels = np.full(len(codes), label, dtype=np.int64)
    return TaskBatch(codes, labels, labels.copy(), origins, sites)


def _split_counts(rng: np.random.Generator, n: int, shares: dict[str, float]) -> list[str]:
    """``n`` origin names drawn with the given shares (deterministic for the rng)."""
    names = list(shares)
    weights = np.array([shares[k] for k in names])
    return [names[i] for i in rng.choice(len(names), size=n, p=weights / weights.sum())]


# --- promoter ------------------------------------------------------------------------------------
def tss_index(length: int) -> int:
    """The TSS sits three quarters into the window: 150 bp upstream, 50 downstream at length 200."""
    return length - length // 4


def _plant_at(rng, row, motif_id, start, *, sharpness, occupancy, strand="+") -> Site | None:
    motif = get_motif(motif_id)
    if not occupancy.free(start, motif.width):
        return None
    instance = sample_matrix(rng, tempered(motif, sharpness), 1)[0]
    if strand == "-":
        instance = reverse_complement(instance)
    return plant(row, instance, start, motif_id=motif_id, strand=strand, occupancy=occupancy)


def _plant_tata(rng, row, species, tss, sharpness, occupancy) -> Site | None:
    """TATA core 26-31 bp upstream of the TSS (40-120 bp in yeast; the -10 box in E. coli)."""
    if species.promoter_style == "bacterium":
        return _plant_at(rng, row, "SIGMA70-10", tss - 12 - int(rng.integers(0, 3)),
                         sharpness=sharpness, occupancy=occupancy)
    upstream = int(rng.integers(40, 121)) if species.promoter_style == "yeast" else int(rng.integers(26, 32))
    # MA0108.2's core TATAAAA starts at its second column
    return _plant_at(rng, row, "MA0108.2", tss - upstream - 1, sharpness=sharpness, occupancy=occupancy)


def _bacterial_upstream(rng, row, minus10: Site | None, tss, sharpness, rate, occ) -> list[Site | None]:
    """The -35 box 16-18 bp upstream of the -10 box, and an AT-rich UP element just upstream of it."""
    sites = []
    minus35 = (minus10.start if minus10 else tss - 13) - 23 + int(rng.integers(-1, 2))
    if rng.random() < 0.8 * rate:
        sites.append(_plant_at(rng, row, "SIGMA70-35", minus35, sharpness=sharpness, occupancy=occ))
    if rng.random() < 0.5 * rate:
        sites.append(_plant_at(rng, row, "UP-ELEMENT", minus35 - 21, sharpness=sharpness, occupancy=occ))
    return sites


def _poly_da_dt(rng: np.random.Generator, row: np.ndarray, start: int, occupancy: Occupancy) -> Site | None:
    """Yeast nucleosome-depleting poly(dA:dT) tract: 10-18 A (or T), 10 % of bases off."""
    width = int(rng.integers(10, 19))
    if not occupancy.free(start, width):
        return None
    base = 0 if rng.random() < 0.5 else 3
    tract = np.where(rng.random(width) < 0.9, base, rng.integers(0, 4, width)).astype(np.uint8)
    return plant(row, tract, start, motif_id="POLY-DA-DT", strand="+" if base == 0 else "-",
                 occupancy=occupancy)


def _plant_near(rng, row, motif_id, low, high, sharpness, occ) -> Site | None:
    """One instance of a motif, either strand, starting somewhere in ``[low, high)``."""
    return plant_anywhere(rng, row, get_motif(motif_id), sharpness=sharpness, occupancy=occ,
                          low=max(low, 0), high=high)


def _mammal_elements(rng, row, tss, cpg_island, s, rate, occ) -> list[Site | None]:
    """Inr at the TSS, SP1 GC boxes (many in CpG islands) and KLF GC/GT boxes upstream, YY1 near the TSS."""
    sites = []
    if rng.random() < 0.7 * rate:
        sites.append(_plant_at(rng, row, "INR-MAMMAL", tss - 2, sharpness=s, occupancy=occ))
    gc_boxes = ["MA0079.5"] * rng.poisson((4.0 if cpg_island else 1.5) * rate) + ["MA0039.5"] * rng.poisson(rate)
    sites += [_plant_near(rng, row, motif_id, tss - 140, tss - 40, s, occ) for motif_id in gc_boxes]
    if rng.random() < 0.4 * rate:
        sites.append(_plant_near(rng, row, "MA0095.4", tss - 30, tss + 30, s, occ))
    return sites


def _fly_elements(rng, row, tss, s, rate, occ) -> list[Site | None]:
    """Inr at the TSS, DPE at +28..+32, and the DRE and motif 1 of TATA-less fly promoters upstream."""
    sites = []
    if rng.random() < 0.8 * rate:
        sites.append(_plant_at(rng, row, "INR-FLY", tss - 2, sharpness=s, occupancy=occ))
    if rng.random() < 0.5 * rate:
        dpe_start = tss + 27 + int(rng.integers(0, 2))
        sites.append(_plant_at(rng, row, "DPE-FLY", dpe_start, sharpness=s, occupancy=occ))
    for motif_id in ("DRE-FLY", "MOTIF1-FLY"):
        if rng.random() < 0.75 * rate:
            sites.append(_plant_near(rng, row, motif_id, tss - 100, tss, s, occ))
    return sites


def _promoter_elements(rng, row, species: SpeciesProfile, tss: int, cpg_island: bool,
                       difficulty: Difficulty) -> tuple[list[Site | None], Occupancy]:
    """The species' core-promoter elements, each at its typical distance from the TSS."""
    s, rate, occ = difficulty.sharpness, difficulty.element_rate, Occupancy(row.size)
    sites = [_plant_tata(rng, row, species, tss, s, occ) if rng.random() < species.tata_fraction else None]
    style = species.promoter_style
    if style == "bacterium":
        return sites + _bacterial_upstream(rng, row, sites[0], tss, s, rate, occ), occ
    if rng.random() < species.ccaat_fraction:  # CCAAT boxes often come in pairs
        low = tss - (200 if style == "yeast" else 100)
        copies = 1 + int(rng.random() < 0.3)
        sites += [_plant_near(rng, row, "MA0060.3", low, tss - 60, s, occ) for _ in range(copies)]
    if style == "mammal":
        sites += _mammal_elements(rng, row, tss, cpg_island, s, rate, occ)
    elif style == "fly":
        sites += _fly_elements(rng, row, tss, s, rate, occ)
    elif rng.random() < 0.7 * rate:  # yeast
        sites.append(_poly_da_dt(rng, row, int(rng.integers(max(tss - 150, 0), tss - 50)), occ))
    return sites, occ


def _fallback_element(rng, row, species, tss, difficulty, occ) -> Site | None:
    """Every promoter keeps at least one element, so its planted class is identifiable."""
    fallback = {"mammal": "INR-MAMMAL", "fly": "INR-FLY", "bacterium": "SIGMA70-35"}.get(species.promoter_style)
    if fallback == "SIGMA70-35":
        return _plant_at(rng, row, fallback, tss - 36, sharpness=difficulty.sharpness, occupancy=occ)
    if fallback:
        return _plant_at(rng, row, fallback, tss - 2, sharpness=difficulty.sharpness, occupancy=occ)
    return _poly_da_dt(rng, row, int(rng.integers(max(tss - 150, 0), tss - 50)), occ)


def _promoters(rng, species, *, n, length, difficulty) -> tuple[np.ndarray, list[list[Site]]]:
    tss = tss_index(length)
    codes = sample_markov(rng, species_background(species), n=n, length=length)
    island = rng.random(n) < species.cpg_island_fraction
    if island.any():
        codes[island] = sample_markov(rng, cpg_island_background(), n=int(island.sum()), length=length)
    all_sites = []
    for row, in_island in zip(codes, island, strict=True):
        sites, occ = _promoter_elements(rng, row, species, tss, bool(in_island), difficulty)
        sites = [site for site in sites if site is not None]
        if not sites:
            sites = [site for site in [_fallback_element(rng, row, species, tss, difficulty, occ)] if site]
        all_sites.append(sites)
    return codes, all_sites


def _promoter_decoy_ids(species: SpeciesProfile) -> list[str]:
    return {"mammal": ["MA0108.2", "MA0060.3", "MA0079.5", "INR-MAMMAL"],
            "fly": ["MA0108.2", "DRE-FLY", "MOTIF1-FLY"],
            "yeast": ["MA0108.2", "MA0060.3"],
            "bacterium": ["SIGMA70-10", "SIGMA70-35", "UP-ELEMENT"]}[species.promoter_style]


def _add_decoys(rng, codes, motif_ids, weights, difficulty, *, max_decoys: int) -> list[list[Site]]:
    """Isolated motifs anywhere in negatives: up to ``max_decoys`` each, one per ``decoy_rate``
    draw, at least 40 bp apart so they never form a cluster."""
    probabilities = np.asarray(weights, dtype=float) / np.sum(weights)
    all_sites = []
    for row in codes:
        occ, sites = Occupancy(row.size), []
        for _ in range(rng.binomial(max_decoys, difficulty.decoy_rate)):
            motif = get_motif(motif_ids[rng.choice(len(motif_ids), p=probabilities)])
            site = plant_anywhere(rng, row, motif, sharpness=difficulty.sharpness, occupancy=occ)
            if site:
                occ.take(max(site.start - 40, 0), site.width + 80)
                sites.append(site)
        all_sites.append(sites)
    return all_sites


def promoter_batch(rng, species: SpeciesProfile, *, n_pos: int, n_neg: int, length: int,
                   difficulty: Difficulty) -> TaskBatch:
    """Promoters (TSS at :func:`tss_index`) vs species background, CpG-island background (mammals)
    and dinucleotide-resampled promoters, negatives carrying misplaced promoter elements."""
    codes, sites = _promoters(rng, species, n=n_pos, length=length, difficulty=difficulty)
    positives = _batch(codes, 1, ["promoter"] * n_pos, sites)
    shares = {"background": 0.35, "cpg_island": 0.25, "shuffled": 0.4} if species.cpg_island_fraction else \
        {"background": 0.55, "shuffled": 0.45}
    origins = sorted(_split_counts(rng, n_neg, shares))
    negatives = np.empty((n_neg, length), dtype=np.uint8)
    for origin in dict.fromkeys(origins):  # a set would iterate in hash order: not reproducible
        rows = np.array([i for i, o in enumerate(origins) if o == origin])
        negatives[rows] = _promoter_negatives(rng, species, origin, n=rows.size, length=length,
                                              difficulty=difficulty)
    decoy_ids = _promoter_decoy_ids(species)
    decoys = _add_decoys(rng, negatives, decoy_ids, [1.0] * len(decoy_ids), difficulty, max_decoys=1)
    return _concat(positives, _batch(negatives, 0, origins, decoys))


def _promoter_negatives(rng, species, origin, *, n, length, difficulty) -> np.ndarray:
    if origin == "background":
        return sample_markov(rng, species_background(species), n=n, length=length)
    if origin == "cpg_island":
        return sample_markov(rng, cpg_island_background(), n=n, length=length)
    promoters, _ = _promoters(rng, species, n=n, length=length, difficulty=difficulty)
    return dinucleotide_resample(rng, promoters)


# --- enhancer ------------------------------------------------------------------------------------
def enhancer_batch(rng, species: SpeciesProfile, *, n_pos: int, n_neg: int, length: int,
                   difficulty: Difficulty) -> TaskBatch:
    """Clusters of 2-5 TF sites within ~60-120 bp vs background with up to two isolated sites and
    dinucleotide-resampled enhancers."""
    ids = [m for m, _ in species.enhancer_motifs]
    weights = [w for _, w in species.enhancer_motifs]
    codes, sites = _enhancers(rng, species, ids, weights, n=n_pos, length=length, difficulty=difficulty)
    positives = _batch(codes, 1, ["enhancer"] * n_pos, sites)
    origins = sorted(_split_counts(rng, n_neg, {"background": 0.5, "shuffled": 0.5}))
    n_shuffled = origins.count("shuffled")
    background = sample_markov(rng, species_background(species), n=n_neg - n_shuffled, length=length)
    to_shuffle, _ = _enhancers(rng, species, ids, weights, n=n_shuffled, length=length, difficulty=difficulty)
    negatives = np.concatenate([background, dinucleotide_resample(rng, to_shuffle)])
    decoys = _add_decoys(rng, negatives, ids, weights, difficulty, max_decoys=2)
    return _concat(positives, _batch(negatives, 0, origins, decoys))


def _enhancers(rng, species, ids, weights, *, n, length, difficulty) -> tuple[np.ndarray, list[list[Site]]]:
    codes = sample_markov(rng, species_background(species), n=n, length=length)
    probabilities = np.asarray(weights) / np.sum(weights)
    all_sites = []
    for row in codes:
        width = min(int(rng.integers(60, 121)), length)
        low = int(rng.integers(0, length - width + 1))
        occ, sites = Occupancy(length), []
        for _ in range(2 + rng.binomial(3, difficulty.element_rate)):
            motif = get_motif(ids[rng.choice(len(ids), p=probabilities)])
            site = plant_anywhere(rng, row, motif, sharpness=difficulty.sharpness, occupancy=occ,
                                  low=low, high=low + width - motif.width + 1)
            if site:
                sites.append(site)
        all_sites.append(sites)
    return codes, all_sites


# --- coding --------------------------------------------------------------------------------------
def _orf_start_context(rng, row, species, start, difficulty, occ) -> Site | None:
    """Kozak (eukaryotes) or Shine-Dalgarno 5-9 nt upstream (E. coli) before the ATG at ``start``."""
    if species.promoter_style == "bacterium":
        row[start : start + 3] = (0, 3, 2)  # ATG
        return _plant_at(rng, row, "SHINE-DALGARNO", start - 6 - int(rng.integers(5, 10)),
                         sharpness=difficulty.sharpness, occupancy=occ)
    kozak = sample_matrix(rng, tempered(get_motif("KOZAK"), difficulty.sharpness), 1)[0]
    return plant(row, kozak[:9], start - 6, motif_id="KOZAK", strand="+", occupancy=occ)


def _coding_windows(rng, species, *, n, length, difficulty) -> tuple[np.ndarray, list[list[Site]]]:
    """ORF windows: a start (5' UTR, Kozak/SD, ATG, codons), the inside of a CDS in any frame, or
    an end (codons, stop, 3' UTR). ``Site("ORF", start, "+", width)`` marks the in-frame codons."""
    codes = sample_markov(rng, species_background(species), n=n, length=length)
    cds = sample_codons(rng, species.codon_column, n=n, n_codons=length // 3 + 2)
    layouts = _split_counts(rng, n, {"start": 0.4, "inside": 0.4, "end": 0.2})
    all_sites = []
    for row, orf, layout in zip(codes, cds, layouts, strict=True):
        occ, sites = Occupancy(length), []
        if layout == "start":
            begin = int(rng.integers(16, length // 3))
            row[begin:] = orf[: length - begin]
            sites.append(_orf_start_context(rng, row, species, begin, difficulty, occ))
            sites.append(Site("ORF", begin, "+", (length - begin) // 3 * 3))
        elif layout == "inside":
            frame = int(rng.integers(0, 3))
            row[:] = orf[frame : frame + length]
            sites.append(Site("ORF", (3 - frame) % 3, "+", (length - (3 - frame) % 3) // 3 * 3))
        else:
            stop_at = int(rng.integers(length // 2, length - 20)) // 3 * 3
            row[:stop_at] = orf[:stop_at]
            row[stop_at : stop_at + 3] = sample_stop(rng, species.codon_column)
            sites.append(Site("ORF", 0, "+", stop_at + 3))
        all_sites.append([site for site in sites if site is not None])
    return codes, all_sites


def _short_orfs(rng, row, species) -> None:
    """Occasional upstream-ORF-like ATG ... stop of 2-8 codons in non-coding background."""
    for _ in range(rng.integers(0, 3)):
        n_codons = int(rng.integers(2, 9))
        start = int(rng.integers(0, row.size - 3 * n_codons - 6))
        body = sample_codons(rng, species.codon_column, n=1, n_codons=n_codons)[0]
        orf = np.concatenate([[0, 3, 2], body, sample_stop(rng, species.codon_column)])
        row[start : start + orf.size] = orf


def _pseudogene(rng, row, species, background) -> np.ndarray:
    """A coding window disabled by a premature stop and 3-5 frameshifts (1-2 bp indels)."""
    sequence = row.copy()
    stop_at = int(rng.integers(0, row.size // 3 - 1)) * 3
    sequence[stop_at : stop_at + 3] = sample_stop(rng, species.codon_column)
    for _ in range(rng.integers(3, 6)):
        at = int(rng.integers(10, sequence.size - 10))
        size = int(rng.integers(1, 3))
        if rng.random() < 0.5:
            sequence = np.delete(sequence, slice(at, at + size))
        else:
            sequence = np.insert(sequence, at, rng.integers(0, 4, size).astype(np.uint8))
    return np.concatenate([sequence, background])[: row.size]


def coding_batch(rng, species: SpeciesProfile, *, n_pos: int, n_neg: int, length: int,
                 difficulty: Difficulty) -> TaskBatch:
    """ORFs with the species' codon usage vs non-coding background with short ORFs,
    dinucleotide-resampled ORFs, and frameshifted pseudogenes."""
    codes, sites = _coding_windows(rng, species, n=n_pos, length=length, difficulty=difficulty)
    positives = _batch(codes, 1, ["coding"] * n_pos, sites)
    pseudo = 0.05 + 0.2 * difficulty.level
    origins = sorted(_split_counts(rng, n_neg, {"noncoding": 0.7 - pseudo / 2, "shuffled": 0.3 - pseudo / 2,
                                                "pseudogene": pseudo}))
    negatives = sample_markov(rng, species_background(species), n=n_neg, length=length)
    templates, _ = _coding_windows(rng, species, n=n_neg, length=length, difficulty=difficulty)
    shuffled = dinucleotide_resample(rng, templates)
    for i, origin in enumerate(origins):
        if origin == "noncoding":
            _short_orfs(rng, negatives[i], species)
        elif origin == "shuffled":
            negatives[i] = shuffled[i]
        else:
            negatives[i] = _pseudogene(rng, templates[i], species, negatives[i])
    return _concat(positives, _batch(negatives, 0, origins, [[] for _ in range(n_neg)]))
