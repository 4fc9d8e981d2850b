"""Aggregation on hand-made updates: exact expected values (Arrange / Act / Assert)."""

import numpy as np
import pytest

from server.aggregation import (
    BACKBONE,
    AggregationError,
    Update,
    UpdateRejected,
    aggregate,
    contributor_weights,
    validate_update,
)

GLOBAL = {"embedding.weight": np.zeros(2, np.float32), "heads.promoter.w": np.zeros(1, np.float32),
          "heads.splice.w": np.zeros(1, np.float32), "heads.coding.w": np.full(1, 7.0, np.float32)}


def update(name, species, backbone, examples, heads=None):
    """An institution's update: backbone value, per-task example counts, per-head values (a head it
    did not train is sent back unchanged at -1, which must never show up in an average)."""
    heads = heads or {}
    weights = {"embedding.weight": np.full(2, backbone, np.float32),
               "heads.promoter.w": np.full(1, heads.get("promoter", -1.0), np.float32),
               "heads.splice.w": np.full(1, heads.get("splice", -1.0), np.float32),
               "heads.coding.w": np.full(1, 7.0, np.float32)}
    return Update(name, species, weights, examples)


def test_species_balanced_backbone_gives_each_species_equal_weight():
    # human: two institutions (n 100 and 300), mouse: one (n 50). Species-balanced:
    # human part = (100*1 + 300*5)/400 = 4.0 ; mouse part = 10 ; theta = (4 + 10) / 2 = 7.
    updates = [update("a", "human", 1.0, {"promoter": 100}), update("b", "human", 5.0, {"promoter": 300}),
               update("c", "mouse", 10.0, {"promoter": 50})]
    weights, report = aggregate(updates, GLOBAL, mode="species_balanced")
    np.testing.assert_allclose(weights["embedding.weight"], [7.0, 7.0])
    assert report.weights[BACKBONE] == pytest.approx({"a": 0.125, "b": 0.375, "c": 0.5})


def test_species_weights_lambda():
    # lambda_human = 3, lambda_mouse = 1: theta = (3*4 + 1*10) / 4 = 5.5
    updates = [update("a", "human", 1.0, {"promoter": 100}), update("b", "human", 5.0, {"promoter": 300}),
               update("c", "mouse", 10.0, {"promoter": 50})]
    weights, _ = aggregate(updates, GLOBAL, species_weights={"human": 3.0})
    np.testing.assert_allclose(weights["embedding.weight"], 5.5)


def test_examples_mode_is_fedavg_with_species_multipliers():
    # w = lambda * n: a 100, b 300, c 2*50=100 -> (100*1 + 300*5 + 100*10) / 500 = 5.2
    updates = [update("a", "human", 1.0, {"promoter": 100}), update("b", "human", 5.0, {"promoter": 300}),
               update("c", "mouse", 10.0, {"promoter": 50})]
    weights, _ = aggregate(updates, GLOBAL, mode="examples", species_weights={"mouse": 2.0})
    np.testing.assert_allclose(weights["embedding.weight"], 5.2)


def test_uniform_mode():
    updates = [update("a", "human", 1.0, {"promoter": 100}), update("b", "human", 5.0, {"promoter": 300}),
               update("c", "mouse", 9.0, {"promoter": 50})]
    weights, _ = aggregate(updates, GLOBAL, mode="uniform")
    np.testing.assert_allclose(weights["embedding.weight"], 5.0)


def test_heads_average_only_over_institutions_that_trained_them():
    # a trained promoter (n 100) and splice (n 100); b only promoter (n 300); c only splice (n 50, mouse).
    # Backbone n: a 200, b 300, c 50 -> human (200*1 + 300*5)/500 = 3.4, mouse 10 -> (3.4+10)/2 = 6.7
    # promoter: only human (a 100 -> 2.0, b 300 -> 6.0) -> (200 + 1800)/400 = 5.0
    # splice: human a (3.0) and mouse c (4.0), balanced -> 3.5
    updates = [update("a", "human", 1.0, {"promoter": 100, "splice": 100}, {"promoter": 2.0, "splice": 3.0}),
               update("b", "human", 5.0, {"promoter": 300}, {"promoter": 6.0}),
               update("c", "mouse", 10.0, {"splice": 50}, {"splice": 4.0})]
    weights, report = aggregate(updates, GLOBAL)
    np.testing.assert_allclose(weights["embedding.weight"], 6.7, rtol=1e-6)
    np.testing.assert_allclose(weights["heads.promoter.w"], 5.0)
    np.testing.assert_allclose(weights["heads.splice.w"], 3.5)
    assert set(report.weights["promoter"]) == {"a", "b"}
    assert set(report.weights["splice"]) == {"a", "c"}


def test_head_nobody_trained_keeps_its_previous_value():
    updates = [update("a", "human", 1.0, {"promoter": 10}, {"promoter": 2.0})]
    previous = {**GLOBAL, "heads.coding.w": np.full(1, 42.0, np.float32)}
    weights, report = aggregate(updates, previous)
    np.testing.assert_array_equal(weights["heads.coding.w"], [42.0])
    assert "coding" in report.kept and "splice" in report.kept


def test_zero_example_tasks_do_not_count():
    updates = [update("a", "human", 1.0, {"promoter": 10, "splice": 0}),
               update("b", "mouse", 3.0, {"splice": 5}, {"splice": 8.0})]
    weights, _ = aggregate(updates, GLOBAL)
    np.testing.assert_allclose(weights["heads.splice.w"], 8.0)


def test_dtype_is_preserved_and_math_is_float64():
    updates = [update("a", "human", 1e-8, {"promoter": 1}), update("b", "mouse", 3e-8, {"promoter": 1})]
    weights, _ = aggregate(updates, GLOBAL)
    assert weights["embedding.weight"].dtype == np.float32
    np.testing.assert_allclose(weights["embedding.weight"], 2e-8, rtol=1e-6)


def test_no_updates_is_an_error():
    with pytest.raises(AggregationError, match="no usable updates"):
        aggregate([], GLOBAL)


def test_contributor_weights_sum_to_one():
    updates = [update("a", "human", 1.0, {"promoter": 7}), update("b", "yeast", 1.0, {"promoter": 1}),
               update("c", "yeast", 1.0, {"promoter": 2})]
    for mode in ("species_balanced", "examples", "uniform"):
        w = contributor_weights(updates, BACKBONE, mode=mode, species_weights={"yeast": 0.5})
        assert sum(w.values()) == pytest.approx(1.0)


# -- validation ------------------------------------------------------------------------------------

def good():
    return {k: v.copy() for k, v in GLOBAL.items()}


@pytest.mark.parametrize("mutate, message", [
    (lambda w: w["embedding.weight"].__setitem__(0, np.nan), r"embedding.weight holds 1 non-finite"),
    (lambda w: w["heads.splice.w"].__setitem__(0, np.inf), r"heads.splice.w holds 1 non-finite"),
    (lambda w: w.__setitem__("embedding.weight", np.zeros(3, np.float32)), r"shape \(3,\), expected \(2,\)"),
    (lambda w: w.__setitem__("embedding.weight", np.zeros(2, np.float64)), "dtype float64, expected float32"),
    (lambda w: w.pop("heads.coding.w"), r"missing parameters \['heads.coding.w'\]"),
    (lambda w: w.__setitem__("heads.histone.w", np.zeros(1, np.float32)), "unexpected parameters"),
])
def test_bad_updates_are_rejected_with_the_reason(mutate, message):
    weights = good()
    mutate(weights)
    with pytest.raises(UpdateRejected, match=rf"^st-olav: .*{message}"):
        validate_update(weights, GLOBAL, institution="st-olav")


def test_update_norm_bound():
    weights = good()
    weights["embedding.weight"][:] = 3.0  # distance sqrt(9 + 9) = 4.24
    validate_update(weights, GLOBAL, institution="a", max_update_norm=5.0)
    with pytest.raises(UpdateRejected, match="update norm 4.243 exceeds the bound 4"):
        validate_update(weights, GLOBAL, institution="a", max_update_norm=4.0)


def test_valid_update_passes():
    validate_update(good(), GLOBAL, institution="a")


def test_updates_of_trainable_parameters_only():
    # Heads-only fine-tuning: institutions send only their heads; the backbone keeps its value.
    a = Update("a", "human", {"heads.promoter.w": np.full(1, 2.0, np.float32)}, {"promoter": 10})
    b = Update("b", "mouse", {"heads.promoter.w": np.full(1, 4.0, np.float32),
                              "heads.splice.w": np.full(1, 6.0, np.float32)}, {"promoter": 10, "splice": 5})

    weights, _ = aggregate([a, b], GLOBAL)

    assert weights["embedding.weight"].tolist() == [0.0, 0.0]
    assert weights["heads.promoter.w"].tolist() == [3.0]
    assert weights["heads.splice.w"].tolist() == [6.0]
    assert weights["heads.coding.w"].tolist() == [7.0]


def test_an_update_must_hold_exactly_the_expected_parameters():
    heads_only = {"heads.promoter.w": np.ones(1, np.float32)}
    validate_update(heads_only, GLOBAL, institution="a", expected={"heads.promoter.w"})

    with pytest.raises(UpdateRejected, match="unexpected parameters .*embedding.weight"):
        validate_update({**heads_only, "embedding.weight": np.ones(2, np.float32)}, GLOBAL, institution="a",
                        expected={"heads.promoter.w"})
    with pytest.raises(UpdateRejected, match="missing parameters .*heads.splice.w"):
        validate_update(heads_only, GLOBAL, institution="a", expected={"heads.promoter.w", "heads.splice.w"})
