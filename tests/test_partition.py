"""Partitioning records across institutions and into train/val/test: sizes, skew direction,
determinism, and a clear error for every impossible request."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.dataset import Record
from common.data.partition import (
    PartitionError,
    partition,
    split_by_species,
    split_iid,
    split_label_skew,
    split_quantity_skew,
    split_train_val_test,
)


def make_records(n: int, *, classes: int = 2, species: tuple[str, ...] = ("human",)) -> list[Record]:
    return [Record(f"r{i:04d}", "ACGT", i % classes, species[i % len(species)]) for i in range(n)]


def ids(parts: list[list[Record]]) -> list[list[str]]:
    return [[r.id for r in part] for part in parts]


def assert_exact_cover(records: list[Record], parts: list[list[Record]]) -> None:
    flat = [r.id for part in parts for r in part]
    assert sorted(flat) == sorted(r.id for r in records)  # every record once, none invented


def label_skew_score(parts: list[list[Record]]) -> float:
    """Mean over parts of the majority-class share: 0.5 for balanced binary parts, 1.0 fully skewed."""
    return float(np.mean([np.bincount([r.label for r in p], minlength=2).max() / len(p) for p in parts]))


# --- IID ----------------------------------------------------------------------------------------
def test_iid_parts_cover_the_records_with_sizes_within_one():
    records = make_records(103)

    parts = split_iid(records, n_parts=5, seed=0)

    assert_exact_cover(records, parts)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_iid_is_deterministic_for_a_seed_and_changes_with_it():
    records = make_records(50)

    assert ids(split_iid(records, n_parts=3, seed=1)) == ids(split_iid(records, n_parts=3, seed=1))
    assert ids(split_iid(records, n_parts=3, seed=1)) != ids(split_iid(records, n_parts=3, seed=2))


@pytest.mark.parametrize(("n_parts", "message"), [(0, "n_parts: expected a positive integer"),
                                                  (11, "10 records cannot give 11 parts")])
def test_iid_rejects_impossible_part_counts(n_parts, message):
    with pytest.raises(PartitionError, match=message):
        split_iid(make_records(10), n_parts=n_parts, seed=0)


# --- label skew ---------------------------------------------------------------------------------
def test_small_alpha_skews_labels_more_than_large_alpha():
    records = make_records(2000)

    skewed = split_label_skew(records, n_parts=5, alpha=0.1, seed=3)
    near_iid = split_label_skew(records, n_parts=5, alpha=100.0, seed=3)

    assert_exact_cover(records, skewed)
    assert_exact_cover(records, near_iid)
    assert label_skew_score(skewed) > 0.8
    assert label_skew_score(near_iid) < 0.6


def test_label_skew_is_deterministic_and_respects_min_size():
    records = make_records(400)

    first = split_label_skew(records, n_parts=4, alpha=0.3, seed=4, min_size=20)

    assert ids(first) == ids(split_label_skew(records, n_parts=4, alpha=0.3, seed=4, min_size=20))
    assert min(map(len, first)) >= 20


def test_label_skew_rejects_per_position_labels():
    records = [Record(f"s{i}", "ACGT", np.zeros(4, dtype=np.int64), "human") for i in range(10)]

    with pytest.raises(PartitionError, match="per-position labels"):
        split_label_skew(records, n_parts=2, alpha=1.0, seed=0)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan")])
def test_label_skew_rejects_a_non_positive_alpha(alpha):
    with pytest.raises(PartitionError, match="alpha: expected a positive number"):
        split_label_skew(make_records(20), n_parts=2, alpha=alpha, seed=0)


def test_label_skew_says_when_min_size_cannot_be_met():
    with pytest.raises(PartitionError, match="no draw in 100 gave each of 10 parts 10 record"):
        split_label_skew(make_records(100), n_parts=10, alpha=0.01, seed=0, min_size=10)


# --- quantity skew ------------------------------------------------------------------------------
def test_small_alpha_makes_sizes_more_unequal_than_large_alpha():
    records = make_records(1000)

    skewed = split_quantity_skew(records, n_parts=5, alpha=0.2, seed=5)
    even = split_quantity_skew(records, n_parts=5, alpha=1000.0, seed=5)

    assert_exact_cover(records, skewed)
    assert np.std(list(map(len, skewed))) > 3 * np.std(list(map(len, even)))


def test_quantity_skew_gives_every_part_min_size_and_is_deterministic():
    records = make_records(100)

    parts = split_quantity_skew(records, n_parts=4, alpha=0.05, seed=6, min_size=10)

    assert min(map(len, parts)) >= 10
    assert ids(parts) == ids(split_quantity_skew(records, n_parts=4, alpha=0.05, seed=6, min_size=10))


def test_quantity_skew_rejects_more_minimum_than_records():
    with pytest.raises(PartitionError, match="30 records cannot give 4 parts at least 10"):
        split_quantity_skew(make_records(30), n_parts=4, alpha=1.0, seed=0, min_size=10)


# --- by species ---------------------------------------------------------------------------------
def test_each_part_gets_only_its_species_and_shared_species_are_split():
    records = make_records(90, species=("human", "mouse", "yeast"))

    parts = split_by_species(records, part_species=["human", "mouse", "human", "yeast"], seed=7)

    assert_exact_cover(records, parts)
    assert [{r.species for r in p} for p in parts] == [{"human"}, {"mouse"}, {"human"}, {"yeast"}]
    assert len(parts[0]) == len(parts[2]) == 15


def test_species_without_a_part_is_an_error():
    records = make_records(20, species=("human", "e_coli"))

    with pytest.raises(PartitionError, match=r"species \['e_coli'\] have no part"):
        split_by_species(records, part_species=["human"], seed=0)


def test_species_with_too_few_records_for_its_parts_is_an_error():
    records = [*make_records(3, species=("human",)), Record("m0", "ACGT", 0, "mouse")]

    with pytest.raises(PartitionError, match="species 'mouse': 1 records for 2 parts"):
        split_by_species(records, part_species=["human", "mouse", "mouse"], seed=0)


# --- dispatcher ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("scheme", "expected"), [("iid", split_iid), ("label_skew", split_label_skew),
                                                  ("quantity_skew", split_quantity_skew)])
def test_partition_dispatches_to_the_named_scheme(scheme, expected):
    records = make_records(60)
    extra = {} if scheme == "iid" else {"alpha": 0.5}

    assert ids(partition(records, scheme=scheme, n_parts=3, seed=8, **extra)) == \
        ids(expected(records, n_parts=3, seed=8, **extra))


@pytest.mark.parametrize(("arguments", "message"), [
    ({"scheme": "round_robin", "n_parts": 2}, "unknown scheme 'round_robin'"),
    ({"scheme": "iid"}, "scheme 'iid' needs n_parts"),
    ({"scheme": "species"}, "needs part_species"),
])
def test_partition_rejects_incomplete_requests(arguments, message):
    with pytest.raises(PartitionError, match=message):
        partition(make_records(10), seed=0, **arguments)


# --- train / val / test -------------------------------------------------------------------------
def test_train_val_test_follows_the_fractions_and_stratifies_labels():
    records = make_records(1000, classes=2)

    train, val, test = split_train_val_test(records, fractions=(0.8, 0.1, 0.1), seed=9)

    assert_exact_cover(records, [train, val, test])
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    for split in (train, val, test):
        assert np.mean([r.label for r in split]) == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "sizes"), [(30, (24, 3, 3)), (61, (49, 6, 6)), (10, (8, 1, 1))])
def test_train_val_test_sizes_round_the_shares_of_the_whole_set(n, sizes):
    splits = split_train_val_test(make_records(n), fractions=(0.8, 0.1, 0.1), seed=12)

    assert tuple(map(len, splits)) == sizes


def test_train_val_test_keeps_small_splits_non_empty_and_handles_per_position_labels():
    records = [Record(f"s{i}", "ACGT", np.zeros(4, dtype=np.int64), "human") for i in range(4)]

    train, val, test = split_train_val_test(records, seed=10)

    assert_exact_cover(records, [train, val, test])
    assert min(len(train), len(val), len(test)) >= 1


def test_train_val_test_is_deterministic():
    records = make_records(37)

    first = split_train_val_test(records, seed=11)

    assert ids(list(first)) == ids(list(split_train_val_test(records, seed=11)))


@pytest.mark.parametrize(("fractions", "records", "message"), [
    ((0.5, 0.5), 10, "three non-negative shares"),
    ((0.9, 0.2, -0.1), 10, "three non-negative shares"),
    ((0.5, 0.3, 0.1), 10, "three non-negative shares"),
    ((0.8, 0.1, 0.1), 2, "2 records cannot fill 3 splits"),
])
def test_train_val_test_rejects_bad_fractions(fractions, records, message):
    with pytest.raises(PartitionError, match=message):
        split_train_val_test(make_records(records), fractions=fractions, seed=0)
