"""Split records across institutions (IID, by species, label skew, quantity skew) and into
train/validation/test. Every split is deterministic for its seed and input order, and every
impossible request is a :class:`PartitionError` that says what was asked and why it cannot be met.

Label skew follows Hsu et al. 2019: for each class, the shares of the parts are drawn from
Dirichlet(alpha); small alpha gives each part few classes, large alpha approaches IID.
Quantity skew draws the parts' sizes from Dirichlet(alpha) with IID content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from common.data.dataset import DataError, Record

R = TypeVar("R", bound=Record)
SCHEMES = ("iid", "species", "label_skew", "quantity_skew")
_MAX_DRAWS = 100  # Dirichlet redraws before a min_size request is declared impossible


class PartitionError(DataError):
    """A partition request that cannot be met (too few records, bad alpha, unknown species, ...)."""


def _check_parts(records: Sequence, n_parts: int, min_size: int) -> None:
    if not isinstance(n_parts, int) or isinstance(n_parts, bool) or n_parts < 1:
        raise PartitionError(f"n_parts: expected a positive integer, got {n_parts!r}")
    if not isinstance(min_size, int) or min_size < 0:
        raise PartitionError(f"min_size: expected a non-negative integer, got {min_size!r}")
    if len(records) < n_parts * max(min_size, 1):
        raise PartitionError(f"{len(records)} records cannot give {n_parts} parts "
                             f"at least {max(min_size, 1)} record(s) each")


def _check_alpha(alpha: float) -> None:
    if not isinstance(alpha, int | float) or not np.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"alpha: expected a positive number, got {alpha!r}")


def _take(records: Sequence[R], parts: list[np.ndarray]) -> list[list[R]]:
    return [[records[i] for i in sorted(part.tolist())] for part in parts]


def split_iid(records: Sequence[R], *, n_parts: int, seed: int) -> list[list[R]]:
    """Shuffle and deal the records into ``n_parts`` parts whose sizes differ by at most one.

    Args:
        records: the records to split.
        n_parts: number of parts.
        seed: seed of the shuffle.

    Returns:
        ``n_parts`` lists of records, each in input order.

    Raises:
        PartitionError: ``n_parts < 1`` or fewer records than parts.
    """
    _check_parts(records, n_parts, 1)
    order = np.random.default_rng(seed).permutation(len(records))
    return _take(records, np.array_split(order, n_parts))


def split_by_species(records: Sequence[R], *, part_species: Sequence[str], seed: int) -> list[list[R]]:
    """Give each part only records of its species; parts sharing a species split them IID.

    Args:
        records: records whose ``species`` is set.
        part_species: the species of each part (``len(part_species)`` parts).
        seed: seed of the shuffles.

    Returns:
        One list of records per entry of ``part_species``.

    Raises:
        PartitionError: a record without species or of a species no part takes, or a part whose
            species has fewer records than the parts that share it.
    """
    unassigned = sorted({str(r.species) for r in records} - set(part_species))
    if unassigned:
        raise PartitionError(f"records of species {unassigned} have no part; "
                             f"parts take {sorted(set(part_species))}")
    rng = np.random.default_rng(seed)
    parts: list[list[R]] = [[] for _ in part_species]
    for species in dict.fromkeys(part_species):
        members = [i for i, r in enumerate(records) if r.species == species]
        owners = [k for k, s in enumerate(part_species) if s == species]
        if len(members) < len(owners):
            raise PartitionError(f"species {species!r}: {len(members)} records for {len(owners)} parts")
        for owner, chunk in zip(owners, np.array_split(rng.permutation(members), len(owners)), strict=True):
            parts[owner] = [records[i] for i in sorted(chunk.tolist())]
    return parts


def _sequence_labels(records: Sequence[Record]) -> np.ndarray:
    labels = [r.label for r in records]
    if any(np.ndim(label) != 0 for label in labels):
        raise PartitionError("label skew needs one label per record; these records have per-position labels")
    return np.asarray(labels, dtype=np.int64)


def split_label_skew(records: Sequence[R], *, n_parts: int, alpha: float, seed: int,
                     min_size: int = 1) -> list[list[R]]:
    """Dirichlet label skew: each class is shared among the parts in Dirichlet(alpha) proportions.

    Args:
        records: records with one integer label each.
        n_parts: number of parts.
        alpha: Dirichlet concentration (> 0); 0.1 is strongly skewed, 100 nearly IID.
        seed: seed of the draws.
        min_size: fewest records any part may get; proportions are redrawn until it holds.

    Returns:
        ``n_parts`` lists of records.

    Raises:
        PartitionError: per-position labels, ``alpha <= 0``, too few records, or no draw in
            100 giving every part ``min_size`` records.
    """
    _check_parts(records, n_parts, min_size)
    _check_alpha(alpha)
    labels = _sequence_labels(records)
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(n_parts)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_parts, float(alpha))))[:-1] * members.size).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return _take(records, [np.array(p, dtype=np.int64) for p in parts])
    raise PartitionError(f"label skew with alpha={alpha}: no draw in {_MAX_DRAWS} gave each of {n_parts} parts "
                         f"{min_size} record(s) from {len(records)}; raise alpha or lower min_size")


def split_quantity_skew(records: Sequence[R], *, n_parts: int, alpha: float, seed: int,
                        min_size: int = 1) -> list[list[R]]:
    """Quantity skew: part sizes ``min_size + Multinomial(rest, Dirichlet(alpha))``, content IID.

    Args:
        records: the records to split.
        n_parts: number of parts.
        alpha: Dirichlet concentration (> 0); small alpha gives very unequal sizes.
        seed: seed of the draws.
        min_size: records every part gets before the skewed remainder is dealt.

    Returns:
        ``n_parts`` lists of records.

    Raises:
        PartitionError: ``alpha <= 0`` or fewer than ``n_parts * min_size`` records.
    """
    _check_parts(records, n_parts, min_size)
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    rest = len(records) - n_parts * min_size
    sizes = min_size + rng.multinomial(rest, rng.dirichlet(np.full(n_parts, float(alpha))))
    order = rng.permutation(len(records))
    return _take(records, np.split(order, np.cumsum(sizes)[:-1]))


def partition(records: Sequence[R], *, scheme: str, seed: int, n_parts: int | None = None,
              part_species: Sequence[str] | None = None, alpha: float = 0.5,
              min_size: int = 1) -> list[list[R]]:
    """Dispatch on ``scheme`` (one of :data:`SCHEMES`), for configuration-driven callers.

    Args:
        records: the records to split.
        scheme: ``"iid"``, ``"species"``, ``"label_skew"`` or ``"quantity_skew"``.
        seed: seed of the split.
        n_parts: number of parts (all schemes but ``"species"``).
        part_species: species of each part (``"species"`` only).
        alpha: Dirichlet concentration for the skewed schemes.
        min_size: fewest records per part for the skewed schemes.

    Returns:
        One list of records per part.

    Raises:
        PartitionError: an unknown scheme, a missing argument, or the scheme's own errors.
    """
    if scheme == "species":
        if not part_species:
            raise PartitionError("scheme 'species' needs part_species (the species of each part)")
        return split_by_species(records, part_species=part_species, seed=seed)
    if scheme not in SCHEMES:
        raise PartitionError(f"unknown scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}")
    if n_parts is None:
        raise PartitionError(f"scheme {scheme!r} needs n_parts")
    if scheme == "iid":
        return split_iid(records, n_parts=n_parts, seed=seed)
    split = split_label_skew if scheme == "label_skew" else split_quantity_skew
    return split(records, n_parts=n_parts, alpha=alpha, seed=seed, min_size=min_size)


def split_train_val_test(records: Sequence[R], *, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                         seed: int) -> tuple[list[R], list[R], list[R]]:
    """Train/validation/test split, stratified by label for sequence-level labels.

    Args:
        records: the records to split.
        fractions: shares of train, validation and test (non-negative, summing to 1).
        seed: seed of the shuffles.

    Returns:
        ``(train, val, test)``, each in input order.

    Raises:
        PartitionError: fractions that are not three non-negative numbers summing to 1, or fewer
            records than splits with a positive share.
    """
    shares = np.asarray(fractions, dtype=float)
    if shares.shape != (3,) or (shares < 0).any() or not np.isclose(shares.sum(), 1.0):
        raise PartitionError(f"fractions: expected three non-negative shares summing to 1, got {list(fractions)}")
    if len(records) < int((shares > 0).sum()):
        raise PartitionError(f"{len(records)} records cannot fill {int((shares > 0).sum())} splits")
    per_position = any(np.ndim(r.label) != 0 for r in records)
    strata = np.zeros(len(records), dtype=np.int64) if per_position else _sequence_labels(records)
    rng = np.random.default_rng(seed)
    splits: list[list[int]] = [[], [], []]
    for stratum in np.unique(strata):  # each label's share of val and test, rounded down
        members = rng.permutation(np.flatnonzero(strata == stratum)).tolist()
        size = len(members)
        for k in (1, 2):
            take = int(np.floor(size * shares[k] + 1e-9))  # 500 * 0.1 must give 50, not 49
            splits[k], members = splits[k] + members[:take], members[take:]
        splits[0] += members
    _top_up(rng, splits, shares, len(records))
    _fill_empty(splits, shares)
    train, val, test = _take(records, [np.array(s, dtype=np.int64) for s in splits])
    return train, val, test


def _top_up(rng: np.random.Generator, splits: list[list[int]], shares: np.ndarray, n: int) -> None:
    """Move random training records to val and test until each holds round(n * share) records
    (rounding down per label leaves each at most one record per label short)."""
    for k in (1, 2):
        missing = max(int(round(n * shares[k])) - len(splits[k]), 0)
        moved = set(rng.choice(len(splits[0]), size=min(missing, len(splits[0])), replace=False).tolist())
        splits[k] += [index for j, index in enumerate(splits[0]) if j in moved]
        splits[0] = [index for j, index in enumerate(splits[0]) if j not in moved]


def _fill_empty(splits: list[list[int]], shares: np.ndarray) -> None:
    """Rounding can leave a small positive-share split empty: move one record from the largest."""
    for k in range(3):
        if shares[k] > 0 and not splits[k]:
            donor = max(range(3), key=lambda j: len(splits[j]))
            splits[k].append(splits[donor].pop())
