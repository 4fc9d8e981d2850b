"""What an institution puts into a secure round, and how the server reads the sum back.

Flower's SecAgg+ reveals only the sum of the institutions' vectors. A species-balanced, per-head
average is a sum too, once each institution scales its own update by the weight the server gave it:

    theta_g  =  theta_g^global  +  (sum_k w_kg · Δ_kg)  /  (sum_k w_kg)

for every parameter group g (the backbone, each task's head), Δ_k = theta_k − theta^global. So each
institution sends, masked, ``[w_kg · Δ_k for every parameter in the layout] + [w_kg for every group]``
(zeros for the heads it did not train). The server computes the weights from the record counts it
is told before the round (disclosed metadata, as in the plain protocol), so without dropouts the
weights of a group sum to 1; when an institution drops out mid-protocol the survivors' weights are
renormalised by their own sum, which the protocol delivers with the vector.

Before weighting, an institution bounds its whole update itself (``clip``: the federation's
``max_update_norm``, or the institution-level DP clip), since the server can no longer check one
update. Plain numpy; both sides import it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.finetuning import group_of


class SecureLayoutError(ValueError):
    """A secure round's layout, weights or sum that does not fit the model."""


@dataclass(frozen=True)
class SecureLayout:
    """The order of the masked vector: one entry per parameter name, then one weight per group."""

    names: tuple[str, ...]

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(sorted({group_of(n) for n in self.names}))

    def to_json(self) -> str:
        return json.dumps(list(self.names))

    @classmethod
    def from_json(cls, text: str) -> SecureLayout:
        names = json.loads(text)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) \
                or len(set(names)) != len(names):
            raise SecureLayoutError("secure layout: expected a non-empty list of distinct parameter names")
        return cls(tuple(names))


@dataclass(frozen=True)
class Contribution:
    """One institution's plaintext vector (it never leaves unmasked) and what it may report."""

    vector: list[np.ndarray]
    clipped: bool  # the update was scaled down to the bound
    range_clipped: int  # weighted entries beyond ±clipping_range (the quantiser clips them)


def contribution(trained: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                 weights: Mapping[str, float], layout: SecureLayout, *, clip: float | None,
                 clipping_range: float) -> Contribution:
    """``trained``: the institution's trained tensors (those it would send in a plain round);
    ``reference``: the global model it started from; ``weights``: its weight per group.

    Raises:
        SecureLayoutError: a trained tensor the layout lacks, a shape that differs, or a non-finite value.
    """
    unknown = sorted(set(trained) - set(layout.names))
    if unknown:
        raise SecureLayoutError(f"secure layout lacks trained parameters {unknown[:5]}")
    deltas = {}
    for name, value in trained.items():
        if value.shape != reference[name].shape:
            raise SecureLayoutError(f"{name}: shape {value.shape}, the global model's is {reference[name].shape}")
        delta = value.astype(np.float64) - reference[name].astype(np.float64)
        if not np.all(np.isfinite(delta)):
            raise SecureLayoutError(f"{name}: non-finite values in the update")
        deltas[name] = delta
    missing = sorted(n for n in layout.names if n not in deltas and weights.get(group_of(n), 0.0) > 0)
    if missing:  # a zero there would pull the group's average towards the old value, unseen
        raise SecureLayoutError(f"weighted groups lack trained parameters {missing[:5]}")
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in deltas.values()))
    scale = min(1.0, clip / norm) if clip is not None and norm > 0 else 1.0
    vector = []
    for name in layout.names:
        w = float(weights.get(group_of(name), 0.0)) if name in deltas else 0.0
        vector.append(w * scale * deltas[name] if name in deltas else np.zeros(reference[name].shape))
    group_weights = np.array([float(weights.get(g, 0.0)) for g in layout.groups])
    vector.append(group_weights)
    beyond = sum(int(np.count_nonzero(np.abs(v) > clipping_range)) for v in vector)
    return Contribution(vector, clipped=scale < 1.0, range_clipped=beyond)


def average_from_sum(total: Sequence[np.ndarray], reference: Mapping[str, np.ndarray], layout: SecureLayout,
                     expected_weights: Mapping[str, float], *, tolerance: float) -> dict[str, np.ndarray]:
    """The new global weights from the summed vector.

    ``expected_weights``: per group, the sum of the weights the server gave the institutions whose
    vectors are in the sum (it assigned them, and knows who stayed); the summed weights the protocol
    delivers must agree within ``tolerance`` (the quantisation error), or an institution used other
    weights than it was given. A group nobody in the sum trained keeps its value, as does every
    parameter outside the layout.

    Raises:
        SecureLayoutError: a sum whose length or shapes do not match the layout, non-finite values, or
            summed weights that disagree with the assigned ones.
    """
    if len(total) != len(layout.names) + 1:
        raise SecureLayoutError(f"secure sum: {len(total)} arrays, the layout has {len(layout.names) + 1}")
    summed_weights = np.asarray(total[-1], dtype=np.float64).ravel()
    if summed_weights.shape != (len(layout.groups),):
        raise SecureLayoutError(f"secure sum: {summed_weights.size} group weights, the layout has {len(layout.groups)}")
    for group, got in zip(layout.groups, summed_weights, strict=True):
        want = float(expected_weights.get(group, 0.0))
        if not abs(got - want) <= tolerance:
            raise SecureLayoutError(f"secure sum: the weights of {group} sum to {got:.6g}, but {want:.6g} were "
                                    f"assigned to the institutions in it: one of them used other weights")
    result = {k: v.copy() for k, v in reference.items()}
    for name, summed in zip(layout.names, total[:-1], strict=True):
        if summed.shape != reference[name].shape or not np.all(np.isfinite(summed)):
            raise SecureLayoutError(f"secure sum: {name} has shape {summed.shape} or non-finite values")
        w = float(expected_weights.get(group_of(name), 0.0))
        if w > 0:
            result[name] = (reference[name].astype(np.float64) + summed / w).astype(reference[name].dtype)
    return result
