"""Species-weighted, per-head federated averaging and update validation (plain numpy, no Flower).

DESIGN.md's rule: institution k of species s trained n_k examples,

    theta = sum_s lambda_s sum_{k in s} (n_k / N_s) theta_k  /  sum_s lambda_s

(``species_balanced``: every species counts ``lambda_s`` however many institutions it has), or
``w_k = lambda_s * n_k`` (``examples``: plain FedAvg with species multipliers), or ``w_k = 1``
(``uniform``). The backbone is averaged over every institution that trained, with n_k its total
examples; each task head only over the institutions that trained that task, with n_k counted for
that task. A parameter group nobody trained keeps its previous value, and so does a parameter no
update carries (a frozen one, when the federation trains heads or adapters only: institutions send
only what they trained, ``common.finetuning``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from common.finetuning import BACKBONE, group_of

AggregationMode = Literal["species_balanced", "examples", "uniform"]


class UpdateRejected(ValueError):
    """An institution's update that must not enter the average; the message says why."""


class AggregationError(RuntimeError):
    """A round that cannot be aggregated (e.g. too few usable updates)."""


class SecureRoundIncomplete(AggregationError):
    """A secure round that could not finish: too few institutions stayed for SecAgg+ to unmask the
    sum (below the reconstruction threshold or ``min_train_institutions``), or the unmasked sum failed
    its checks. ``ready``: who was to take part; ``rejected``: the reports of vectors screened out."""

    def __init__(self, message: str, ready: dict[int, tuple[str, str, dict]], rejected: list | None = None):
        super().__init__(message)
        self.ready = ready
        self.rejected = rejected or []


@dataclass(frozen=True)
class Update:
    """One institution's trained weights and how many examples of each task it trained on."""

    institution: str
    species: str
    weights: Mapping[str, np.ndarray]
    examples: Mapping[str, int]  # task -> examples trained this round

    @property
    def total_examples(self) -> int:
        return sum(self.examples.values())


@dataclass
class AggregationReport:
    """Who contributed to which parameter group, with which normalised weight."""

    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> institution -> weight
    kept: list[str] = field(default_factory=list)  # groups nobody trained: previous value kept
    averaged: list[str] = field(default_factory=list)  # parameters this round averaged from updates


def contributor_weights(updates: Sequence[Update], group: str, *, mode: AggregationMode,
                        species_weights: Mapping[str, float]) -> dict[str, float]:
    """Normalised weights (summing to 1) of the institutions that trained ``group``; {} if none."""
    examples = {u.institution: (u.total_examples if group == BACKBONE else u.examples.get(group, 0))
                for u in updates}
    contributors = [u for u in updates if examples[u.institution] > 0]
    if not contributors:
        return {}
    species_total: dict[str, int] = {}
    for u in contributors:
        species_total[u.species] = species_total.get(u.species, 0) + examples[u.institution]
    raw = {}
    for u in contributors:
        lam = float(species_weights.get(u.species, 1.0))
        n = examples[u.institution]
        if mode == "species_balanced":
            raw[u.institution] = lam * n / species_total[u.species]
        elif mode == "examples":
            raw[u.institution] = lam * n
        else:
            raw[u.institution] = 1.0
    total = sum(raw.values())
    if total <= 0:
        raise AggregationError(f"parameter group {group!r}: the weights of its contributors sum to {total}")
    return {k: v / total for k, v in raw.items()}


def aggregate(updates: Sequence[Update], previous: Mapping[str, np.ndarray], *,
              mode: AggregationMode = "species_balanced",
              species_weights: Mapping[str, float] | None = None,
              ) -> tuple[dict[str, np.ndarray], AggregationReport]:
    """Average validated updates into new global weights.

    Args:
        updates: validated updates (see :func:`validate_update`).
        previous: the current global weights; groups nobody trained keep these.
        mode: ``species_balanced``, ``examples`` or ``uniform``.
        species_weights: lambda_s per species (default 1).

    Returns:
        the new global weights (same names, shapes and dtypes as ``previous``) and a report.

    Raises:
        AggregationError: no updates at all.
    """
    if not updates:
        raise AggregationError("no usable updates to aggregate")
    species_weights = species_weights or {}
    report = AggregationReport()
    groups = sorted({group_of(name) for name in previous})
    for g in groups:
        report.weights[g] = contributor_weights(updates, g, mode=mode, species_weights=species_weights)
        if not report.weights[g]:
            report.kept.append(g)
    by_name = {u.institution: u for u in updates}
    result = {}
    for name, old in previous.items():
        weights = report.weights[group_of(name)]
        sent = all(name in by_name[i].weights for i in weights)
        if not weights or not sent or not np.issubdtype(old.dtype, np.floating):
            result[name] = old.copy()  # nobody trained it (frozen, or an integer buffer): keep it
            continue
        total = np.zeros(old.shape, dtype=np.float64)
        for institution, w in weights.items():
            total += w * by_name[institution].weights[name].astype(np.float64)
        result[name] = total.astype(old.dtype)
        report.averaged.append(name)
    return result, report


def validate_update(weights: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], *,
                    institution: str, max_update_norm: float | None = None,
                    expected: set[str] | None = None) -> None:
    """Check an update against the global model before it may be averaged.

    Args:
        expected: the parameter names the update must hold, no more, no fewer (default: every
            parameter of ``reference``).

    Raises:
        UpdateRejected: missing or extra parameter, wrong shape or dtype, a non-finite value, or an
            update (weights minus the global weights) whose L2 norm exceeds ``max_update_norm``.
    """
    expected = set(reference) if expected is None else expected
    missing = sorted(expected - set(weights))
    extra = sorted(set(weights) - expected)
    if missing:
        raise UpdateRejected(f"{institution}: missing parameters {missing[:5]}{' …' if len(missing) > 5 else ''}")
    if extra:
        raise UpdateRejected(f"{institution}: unexpected parameters {extra[:5]}{' …' if len(extra) > 5 else ''}")
    squared_norm = 0.0
    for name, value in weights.items():
        ref = reference[name]
        if value.shape != ref.shape:
            raise UpdateRejected(f"{institution}: {name} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(ref.shape)}")
        if value.dtype != ref.dtype:
            raise UpdateRejected(f"{institution}: {name} has dtype {value.dtype}, expected {ref.dtype}")
        if np.issubdtype(value.dtype, np.floating):
            if not np.all(np.isfinite(value)):
                bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
                raise UpdateRejected(f"{institution}: {name} holds {bad} non-finite values (NaN or Inf)")
            squared_norm += float(np.sum((value.astype(np.float64) - ref.astype(np.float64)) ** 2))
    norm = math.sqrt(squared_norm)
    if max_update_norm is not None and norm > max_update_norm:
        raise UpdateRejected(f"{institution}: update norm {norm:.4g} exceeds the bound {max_update_norm:.4g}")
