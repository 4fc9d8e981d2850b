"""Institution-level DP at the server (``aggregation.central_dp``), DP-FedAvg style (McMahan et al. 2018).

Each round, every institution's whole update Δ_k = θ_k − θ (all the parameter groups it trained,
backbone and heads together) is clipped to L2 norm ``clip`` = C, the clipped updates are averaged
with the usual species-balanced, per-head weights w_{k,g}, and every averaged parameter of group g
gets Gaussian noise of standard deviation σ · C · max_k w_{k,g}.

Why that is a Gaussian mechanism of noise multiplier σ for one institution: its contribution to
group g is w_{k,g} Δ_{k,g}; divided by the group's noise scale it is at most ||Δ_{k,g}|| / (σ C), and
summed in squares over the groups it is at most ||Δ_k||² / (σ C)² ≤ 1/σ². So the aggregate's
sensitivity to one institution's update, relative to the noise, is 1/σ whatever the weights.

What it protects, and under which neighbouring relation: the *content* of one institution's update
(all its records at once, whatever they are) — two federations that differ in one institution's update
(replaced by zero: the "zero-out" relation) are (ε, δ)-indistinguishable in the released model. The
weights (record counts, species) and the names of who took part are disclosed metadata (README), so
participation itself is not hidden. Every enrolled institution is asked every round (no sampling
amplification is claimed: q = 1), and ε composes over the rounds noised so far with RDP (Opacus'
analysis), recorded per round in ``metrics.jsonl`` and the report. Who is trusted: the server adds the
noise, so this protects against whoever sees the model afterwards (institutions, users of the served
model), not against the server, which sees each update before the noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from server.aggregation import AggregationReport, Update, group_of

RDP_ORDERS = (1.25, 1.5, 1.75, *range(2, 64), 80, 96, 128, 256, 512)


@dataclass(frozen=True)
class CentralNoise:
    """What one round's institution-level DP did, for metrics.jsonl."""

    noise_multiplier: float
    clip: float
    clipped: tuple[str, ...]  # institutions whose update was longer than the clip
    noise_std: dict[str, float]  # parameter group -> standard deviation added
    epsilon: float  # institution-level ε after this round (all noised rounds so far)
    delta: float

    def to_json(self) -> dict:
        return {"noise_multiplier": self.noise_multiplier, "clip": self.clip, "clipped": list(self.clipped),
                "noise_std": dict(self.noise_std), "epsilon": self.epsilon, "delta": self.delta}


def update_norm(update: Update, previous: Mapping[str, np.ndarray]) -> float:
    """L2 norm of θ_k − θ over every floating parameter the update carries."""
    squared = 0.0
    for name, value in update.weights.items():
        if np.issubdtype(value.dtype, np.floating):
            squared += float(np.sum((value.astype(np.float64) - previous[name].astype(np.float64)) ** 2))
    return math.sqrt(squared)


def clip_updates(updates: Sequence[Update], previous: Mapping[str, np.ndarray], clip: float
                 ) -> tuple[list[Update], tuple[str, ...]]:
    """Each update with Δ_k scaled to norm ≤ ``clip`` (θ + Δ_k · min(1, C/||Δ_k||)); who was clipped."""
    result, clipped = [], []
    for update in updates:
        norm = update_norm(update, previous)
        if norm <= clip:
            result.append(update)
            continue
        scale = clip / norm
        weights = {name: (previous[name] + (value.astype(np.float64) - previous[name]) * scale).astype(value.dtype)
                   if np.issubdtype(value.dtype, np.floating) else value for name, value in update.weights.items()}
        result.append(replace(update, weights=weights))
        clipped.append(update.institution)
    return result, tuple(clipped)


def add_group_noise(weights: dict[str, np.ndarray], report: AggregationReport, *, noise_multiplier: float, clip: float, rng: np.random.Generator) -> dict[str, float]:
    """Gaussian noise σ·C·max_k w_{k,g} on every parameter the round averaged from updates (in place;
    frozen parameters and integer buffers depend on no data and stay); the std per group."""
    stds = {group: noise_multiplier * clip * max(w.values()) for group, w in report.weights.items() if w}
    for name in report.averaged:
        value = weights[name]
        noise = rng.normal(0.0, stds[group_of(name)], size=value.shape)
        weights[name] = (value.astype(np.float64) + noise).astype(value.dtype)
    return stds


def institution_epsilon(*, noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` Gaussian mechanisms of ``noise_multiplier``, every institution in every round
    (sample rate 1), composed with RDP."""
    if rounds == 0:
        return 0.0
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=rounds, orders=list(RDP_ORDERS))
    epsilon, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(epsilon)
