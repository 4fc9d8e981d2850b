"""Institution-level DP at the server (issue 16 item 2): clipping, noise scaled by the largest
normalised weight of each parameter group, the sensitivity argument checked on random neighbours,
the accountant against Opacus, and the strategy recording ε per round."""

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from common import protocol as p
from common.config import AggregationSection, CentralDPSection, ConfigError, parse_config
from server.aggregation import Update, aggregate
from server.central_dp import add_group_noise, clip_updates, institution_epsilon, update_norm

PREVIOUS = {"embed.w": np.zeros(400, dtype=np.float32), "heads.promoter.w": np.zeros(300, dtype=np.float32),
            "heads.splice.w": np.zeros(300, dtype=np.float32), "steps": np.zeros(1, dtype=np.int64)}


def make_update(name, species, scale, tasks, seed):
    rng = np.random.default_rng(seed)
    weights = {"embed.w": (rng.normal(size=400) * scale).astype(np.float32), "steps": np.ones(1, dtype=np.int64)}
    for task in tasks:
        weights[f"heads.{task}.w"] = (rng.normal(size=300) * scale).astype(np.float32)
    return Update(name, species, weights, {t: 100 * (seed + 1) for t in tasks})


def test_only_updates_longer_than_the_clip_are_scaled_to_it_exactly():
    long, short = make_update("a", "human", 1.0, ["promoter"], 0), make_update("b", "mouse", 1e-3, ["splice"], 1)
    clipped, who = clip_updates([long, short], PREVIOUS, clip=2.0)
    assert who == ("a",)
    assert update_norm(clipped[0], PREVIOUS) == pytest.approx(2.0, rel=1e-5)
    assert clipped[1] is short and clipped[0].weights["steps"][0] == 1  # integer buffers untouched


def test_noise_std_per_group_is_sigma_clip_and_the_largest_weight():
    updates = [make_update("a", "human", 0.1, ["promoter", "splice"], 0), make_update("b", "mouse", 0.1, ["promoter"], 1),
               make_update("c", "mouse", 0.1, ["promoter"], 2)]
    weights, report = aggregate(updates, PREVIOUS)
    noiseless = {k: v.copy() for k, v in weights.items()}
    stds = add_group_noise(weights, report, noise_multiplier=2.0, clip=0.5, rng=np.random.default_rng(7))
    # species-balanced: human 1/2; the two mouse institutions share the other half by examples (2:3)
    assert stds["promoter"] == pytest.approx(2.0 * 0.5 * 0.5)
    assert stds["splice"] == pytest.approx(2.0 * 0.5 * 1.0)  # one contributor: weight 1
    for name, group in (("embed.w", "<backbone>"), ("heads.promoter.w", "promoter")):
        empirical = float(np.std(weights[name].astype(np.float64) - noiseless[name]))
        assert empirical == pytest.approx(stds[group], rel=0.15)
    assert weights["steps"][0] == noiseless["steps"][0]  # not averaged, not noised


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 5), lam=st.floats(0.2, 5.0))
def test_one_institution_moves_the_aggregate_by_at_most_one_over_sigma_noise_scales(seed, n, lam):
    """The sensitivity argument of server/central_dp.py, on random federations: zero out one institution's
    (clipped) update and the noiseless aggregate moves, in units of each group's noise std, by <= 1/sigma."""
    rng = np.random.default_rng(seed)
    species = ["human", "mouse", "yeast"]
    updates = [make_update(f"i{k}", species[k % 3], float(rng.uniform(0.01, 3)),
                           [t for t in ("promoter", "splice") if rng.random() < 0.7] or ["promoter"], seed + k)
               for k in range(n)]
    sigma, clip, mode_weights = 1.7, 1.0, {"human": lam}
    clipped, _ = clip_updates(updates, PREVIOUS, clip)
    before, report = aggregate(clipped, PREVIOUS, species_weights=mode_weights)
    stds = {g: sigma * clip * max(w.values()) for g, w in report.weights.items() if w}
    victim = int(rng.integers(n))
    zeroed = list(clipped)
    zeroed[victim] = Update(clipped[victim].institution, clipped[victim].species,
                            {k: (PREVIOUS[k].copy() if k in PREVIOUS else v) for k, v in clipped[victim].weights.items()},
                            clipped[victim].examples)  # same weights (public metadata), update zeroed
    after, _ = aggregate(zeroed, PREVIOUS, species_weights=mode_weights)
    from server.aggregation import group_of
    moved = math.sqrt(sum(float(np.sum((before[k].astype(np.float64) - after[k]) ** 2)) / stds[group_of(k)] ** 2
                          for k in report.averaged))
    assert moved <= 1.0 / sigma + 1e-6


@pytest.mark.parametrize("sigma, rounds", [(0.8, 1), (1.0, 5), (2.5, 40)])
def test_institution_epsilon_is_opacus_rdp_with_every_institution_every_round(sigma, rounds):
    accountant = RDPAccountant()
    accountant.history = [(sigma, 1.0, rounds)]
    assert institution_epsilon(noise_multiplier=sigma, rounds=rounds, delta=1e-5) == pytest.approx(
        accountant.get_epsilon(delta=1e-5), rel=0.02)
    assert institution_epsilon(noise_multiplier=sigma, rounds=rounds + 1, delta=1e-5) > \
        institution_epsilon(noise_multiplier=sigma, rounds=rounds, delta=1e-5)


def reply(name, species, weights, examples, epsilon):
    ask = Message(content=RecordDict({p.CONFIG: ConfigRecord({p.SERVER_ROUND: 1})}), dst_node_id=7, message_type="train")
    metrics = {p.NUM_EXAMPLES: sum(examples.values()), p.EPSILON: epsilon, p.DELTA: 1e-5, p.BUDGET: 8.0, p.REFUSED: 0.0,
               **{p.task_key(t, p.NUM_EXAMPLES): n for t, n in examples.items()}}
    return Message(RecordDict({p.ARRAYS: ArrayRecord({k: torch.from_numpy(v) for k, v in weights.items()}),
                               p.METRICS: MetricRecord(metrics),
                               p.META: ConfigRecord({p.INSTITUTION: name, p.SPECIES: species, p.STATUS: "trained",
                                                     p.REASON: ""})}), reply_to=ask)


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def test_the_strategy_clips_noises_and_records_institution_epsilon_each_round(task_identity):
    from server.strategy import SpeciesFedAvg

    central = CentralDPSection(noise_multiplier=1.0, clip=0.5)
    strategy = SpeciesFedAvg(aggregation=AggregationSection(central_dp=central), min_train_institutions=1)
    strategy.set_global(ArrayRecord({k: torch.from_numpy(v) for k, v in PREVIOUS.items()}))
    for server_round in (1, 2):
        moved = [make_update("a", "human", 1.0, ["promoter", "splice"], server_round),
                 make_update("b", "mouse", 1e-4, ["promoter", "splice"], 10 + server_round)]
        replies = [reply(u.institution, u.species, {k: (v + strategy.global_weights[k]).astype(v.dtype)
                                                      if v.dtype.kind == "f" else v for k, v in u.weights.items()},
                         dict(u.examples), float(server_round)) for u in moved]  # updates relative to the global
        strategy.aggregate_train(server_round, replies)
        record = strategy.rounds[server_round].central_dp
        assert record["clipped"] == ["a"] and record["clip"] == 0.5
        assert record["epsilon"] == pytest.approx(institution_epsilon(noise_multiplier=1.0, rounds=server_round,
                                                                      delta=1e-5))
    assert strategy.noised_rounds == 2
    assert strategy.rounds[2].central_dp["epsilon"] > strategy.rounds[1].central_dp["epsilon"]


def test_the_setting_is_validated():
    from common.config import FederationConfig

    with pytest.raises(ConfigError, match="aggregation.central_dp.noise_multiplier"):
        parse_config({"aggregation": {"central_dp": {"noise_multiplier": 0, "clip": 1.0}}}, FederationConfig,
                     source="f.yaml")
    assert AggregationSection().central_dp is None  # off unless asked for
