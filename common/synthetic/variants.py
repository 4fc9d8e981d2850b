"""Variant pairs for variant-impact evaluation: a reference window holding a planted element and
an alternative that destroys, weakens, recreates or leaves it alone (SNVs and 1-3 bp indels).

The planted effect is the change, alternative minus reference, in the log-odds score (nats,
against the species background) of the targeted element's matrix at its planted place (for
indels the best within 3 bases, following the shifted site): strongly negative when a site is destroyed, positive
when one is created, exactly 0 for a change far from it.
A model's ref-vs-alt score for the pair's task should rank-correlate with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.synthetic.genome import (
    Difficulty,
    Site,
    SyntheticError,
    best_log_odds,
    get_species,
    require_task,
    species_background,
    to_string,
)
from common.synthetic.reference import MOTIFS, get_motif
from common.synthetic.splice import splice_batch
from common.synthetic.tasks import enhancer_batch, promoter_batch

VARIANT_KINDS = {"snv_destroy": 0.3, "snv_weaken": 0.2, "snv_create": 0.15, "snv_neutral": 0.15,
                 "deletion": 0.1, "insertion": 0.1}
VARIANT_TASKS = ("promoter", "enhancer", "splice")
_LENGTHS = {"promoter": 200, "enhancer": 200, "splice": 300}
_MEASURED_KINDS = ("jaspar", "splice", "consensus")
_ORIENTED = ("splice", "consensus")  # scored on the given strand only


@dataclass(frozen=True)
class VariantPair:
    """One reference/alternative pair. ``position`` is the 0-based index in ``ref`` of the changed
    (or first deleted / inserted-before) base; ``motif`` the ID of the element it targets."""

    id: str
    species: str
    task: str
    ref: str
    alt: str
    motif: str
    kind: str
    position: int
    effect: float


def _windows(rng, species, task, n, difficulty) -> list[tuple[np.ndarray, list[Site]]]:
    """``n`` positive windows of ``task`` with their scoreable planted sites."""
    if task == "splice":
        batch = splice_batch(rng, species, n=n, length=_LENGTHS[task], difficulty=difficulty)
    else:
        make = promoter_batch if task == "promoter" else enhancer_batch
        batch = make(rng, species, n_pos=n, n_neg=0, length=_LENGTHS[task], difficulty=difficulty)
    windows = []
    for codes, sites in zip(batch.codes, batch.sites, strict=True):
        usable = [s for s in sites if s.motif in _scoreable() and s.start >= 0
                  and s.start + s.width <= codes.size]
        if usable:
            windows.append((codes, usable))
    return windows


def _scoreable() -> set[str]:
    """Measured or consensus matrices a variant can be scored against (branch points excluded:
    their consensus is too loose to score)."""
    return {m.id for m in MOTIFS.values() if m.kind in _MEASURED_KINDS and not m.id.startswith("BRANCH")}


def _local_score(codes: np.ndarray, site: Site, background: np.ndarray, *, slack: int) -> float:
    """Best score of the site's matrix within ``slack`` bases of where it was planted (0 for an
    SNV; an indel moves the site by at most 3)."""
    motif = get_motif(site.motif)
    region = codes[max(site.start - slack, 0) : site.start + site.width + slack]
    return best_log_odds(region, motif, background, both_strands=motif.kind not in _ORIENTED)


def _column_probabilities(site: Site, offset: int) -> np.ndarray:
    """The motif's base probabilities at ``offset`` into the site, on the site's strand."""
    probabilities = get_motif(site.motif).probabilities
    if site.strand == "-":
        return probabilities[::-1, site.width - 1 - offset]  # complement of the mirrored column
    return probabilities[:, offset]


def _destroy(codes: np.ndarray, site: Site) -> tuple[np.ndarray, int]:
    """The SNV that costs the site most: at the column where swapping the present base for the
    column's least likely base loses the most probability."""
    columns = [_column_probabilities(site, k) for k in range(site.width)]
    present = codes[site.start : site.start + site.width]
    losses = [column[base] - column.min() for column, base in zip(columns, present, strict=True)]
    offset = int(np.argmax(losses))
    alt = codes.copy()
    alt[site.start + offset] = int(np.argmin(columns[offset]))
    return alt, site.start + offset


def _apply(rng, kind: str, codes: np.ndarray, site: Site,
           sites: list[Site]) -> tuple[np.ndarray, np.ndarray, int]:
    """(ref, alt, position) for one variant kind at ``site``."""
    if kind == "snv_destroy":
        alt, position = _destroy(codes, site)
        return codes, alt, position
    if kind == "snv_create":  # the same SNV read backwards: the reference lacks the site
        ref, position = _destroy(codes, site)
        return ref, codes, position
    if kind == "snv_weaken":
        position = site.start + int(rng.integers(0, site.width))
        return codes, _substitute(rng, codes, position), position
    if kind == "snv_neutral":
        position = _far_position(rng, codes.size, sites)
        return codes, _substitute(rng, codes, position), position
    size = int(rng.integers(1, 4))
    position = site.start + int(rng.integers(0, max(site.width - size, 1)))
    if kind == "deletion":
        return codes, np.delete(codes, slice(position, position + size)), position
    return codes, np.insert(codes, position, rng.integers(0, 4, size).astype(np.uint8)), position


def _substitute(rng, codes: np.ndarray, position: int) -> np.ndarray:
    alt = codes.copy()
    alt[position] = (codes[position] + int(rng.integers(1, 4))) % 4
    return alt


def _far_position(rng, length: int, sites: list[Site], margin: int = 10) -> int:
    """A position at least ``margin`` bases from every planted site (any position if none is)."""
    near = np.zeros(length, dtype=bool)
    for s in sites:
        near[max(s.start - margin, 0) : s.start + s.width + margin] = True
    free = np.flatnonzero(~near)
    return int(rng.choice(free)) if free.size else int(rng.integers(0, length))


def generate_variant_pairs(*, species: str, n: int, seed: int, difficulty: float = 0.5,
                           tasks: tuple[str, ...] | None = None,
                           id_prefix: str | None = None) -> list[VariantPair]:
    """Generate ``n`` reference/alternative pairs with their planted effect sizes.

    Args:
        species: a species name or alias (see ``synthetic.SPECIES``).
        n: number of pairs.
        seed: seed of the numpy Generator; same arguments, same pairs.
        difficulty: in [0, 1]; sharpness of the planted motifs (see ``Difficulty``).
        tasks: which tasks' windows to mutate (default: those of promoter, enhancer and splice the
            species has).
        id_prefix: pair IDs are ``f"{id_prefix}{i:06d}"`` (default ``"{species}-variant-"``).

    Returns:
        ``n`` :class:`VariantPair`; kinds drawn with the shares in :data:`VARIANT_KINDS`.

    Raises:
        SyntheticError: unknown species or task, a task the species lacks or that carries no
            motif to mutate, ``n < 1``, difficulty outside [0, 1].
    """
    profile = get_species(species)
    if not isinstance(n, int) or n < 1:
        raise SyntheticError(f"n: expected a positive integer, got {n!r}")
    chosen = tuple(t for t in VARIANT_TASKS if t in profile.tasks) if tasks is None else tuple(tasks)
    for task in chosen:
        require_task(profile, task)
        if task not in VARIANT_TASKS:
            raise SyntheticError(f"tasks: {task!r} has no planted motifs to mutate; use {VARIANT_TASKS}")
    level, rng = Difficulty(difficulty), np.random.default_rng(seed)
    background = species_background(profile).start
    task_of_pair = [chosen[i % len(chosen)] for i in range(n)]
    prefix = f"{profile.name}-variant-" if id_prefix is None else id_prefix
    pools = {t: _windows(rng, profile, t, task_of_pair.count(t) * 2 + 4, level) for t in chosen}
    empty = [t for t, pool in pools.items() if not pool]
    if empty:
        raise SyntheticError(f"no window of task(s) {empty} carried a motif to mutate; lower the difficulty")
    kinds = list(VARIANT_KINDS)
    shares = np.array(list(VARIANT_KINDS.values()))
    pairs = []
    for i, task in enumerate(task_of_pair):
        codes, sites = pools[task][i % len(pools[task])]
        site = sites[int(rng.integers(0, len(sites)))]
        kind = kinds[rng.choice(len(kinds), p=shares / shares.sum())]
        ref, alt, position = _apply(rng, kind, codes, site, sites)
        slack = 0 if kind.startswith("snv") else 3
        effect = (_local_score(alt, site, background, slack=slack)
                  - _local_score(ref, site, background, slack=slack))
        pairs.append(VariantPair(f"{prefix}{i:06d}", profile.name, task, to_string(ref), to_string(alt),
                                 site.motif, kind, position, round(float(effect), 4)))
    return pairs
