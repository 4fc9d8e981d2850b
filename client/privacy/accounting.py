"""Privacy accounting for the ledger: epsilon of an Opacus-style history of (sigma, q, steps),
the pre-round budget check, and planning sigma so that a number of rounds fits a budget.

RDP (conservative) by default; PRV returns its upper bound and falls back to RDP when it fails
(reference notes, pitfall P13). "gdp" is refused: a CLT approximation that under-reports epsilon.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv")  # "gdp" is excluded: a CLT approximation that under-reports ε
DEFAULT_ACCOUNTANT = "rdp"
_PLAN_TOLERANCE = 0.01  # plan σ so that ε_total lands in [(1 - tol)·budget, budget]
_MAX_BISECTIONS = 100
_PRV_FAILURES = (ValueError, RuntimeError, ArithmeticError, MemoryError)

log = logging.getLogger(__name__)

Segment = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps), as in Opacus' history


@dataclass(frozen=True)
class BudgetCheck:
    """The outcome of a pre-round budget gate."""

    budget: float  # ε the institution allows in total
    current: float  # ε spent so far
    projected: float  # ε after the planned round

    @property
    def allowed(self) -> bool:
        return self.projected <= self.budget

    @property
    def remaining(self) -> float:
        return max(self.budget - self.current, 0.0)


class BudgetExhausted(RuntimeError):
    """A round would take the institution past its privacy budget; `check` holds the numbers."""

    def __init__(self, check: BudgetCheck, *, institution: str = ""):
        self.check = check
        self.institution = institution
        who = f"institution {institution!r}: " if institution else ""
        super().__init__(
            f"{who}privacy budget exhausted: ε spent {check.current:.4f}, "
            f"after this round {check.projected:.4f} > budget {check.budget:.4f}"
        )





def validate_segment(*, noise_multiplier: float, sample_rate: float, steps: int) -> Segment:
    """Check one (σ, q, steps) entry and return it with plain Python types.

    Args:
        noise_multiplier: σ of the Gaussian noise, relative to the clipping norm.
        sample_rate: Poisson sampling probability q of one record per step.
        steps: number of optimizer steps taken with this σ and q.

    Returns:
        The tuple (σ, q, steps) as (float, float, int).

    Raises:
        ValueError: σ is not a finite number > 0, q is not in (0, 1], or steps is not an int >= 1.
    """
    if not is_real(noise_multiplier) or not (0 < noise_multiplier < math.inf):
        raise ValueError(f"noise_multiplier must be a finite number > 0 (a round without noise has "
                         f"no finite ε), got {noise_multiplier!r}")
    if not is_real(sample_rate) or not (0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return float(noise_multiplier), float(sample_rate), int(steps)


def as_segment(item: Any) -> Segment:
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        raise ValueError(f"a segment is (noise_multiplier, sample_rate, steps), got {item!r}")
    return validate_segment(noise_multiplier=item[0], sample_rate=item[1], steps=item[2])


def round_segments(noise_multiplier: float | None, sample_rate: float | None, steps: int | None,
                    segments: Iterable[Segment] | None) -> tuple[Segment, ...]:
    """A round given as one (σ, q, steps) or as a list of segments, checked."""
    single = (noise_multiplier, sample_rate, steps)
    if segments is None:
        if None in single:
            raise ValueError("give noise_multiplier, sample_rate and steps, or segments")
        return (validate_segment(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps),)
    if single != (None, None, None):
        raise ValueError("give either segments or noise_multiplier/sample_rate/steps, not both")
    checked = tuple(as_segment(item) for item in segments)
    if not checked:
        raise ValueError("segments must hold at least one (noise_multiplier, sample_rate, steps)")
    return checked


def extend_history(history: Iterable[Segment], segments: Iterable[Segment]) -> tuple[Segment, ...]:
    """Append segments, merging consecutive entries with identical σ and q (as Opacus does)."""
    merged = list(history)
    for segment in segments:
        if merged and merged[-1][:2] == segment[:2]:
            sigma, q, steps = merged.pop()
            segment = (sigma, q, steps + segment[2])
        merged.append(segment)
    return tuple(merged)


def compute_epsilon(*, history: Iterable[Segment], delta: float, accountant: str) -> float:
    """ε spent by a whole history, computed with Opacus' accountant.

    Args:
        history: run-length list of (σ, q, steps).
        delta: the δ of the (ε, δ) guarantee.
        accountant: "rdp" (conservative) or "prv" (tighter; its upper bound is used, and RDP when
            PRV fails, so the result is never a lower bound).

    Returns:
        ε >= 0 (0 for an empty history; inf if the history has no finite guarantee).

    Raises:
        ValueError: unknown accountant or a malformed history entry.
    """
    _check_accountant(accountant)
    return _cached_epsilon(tuple(as_segment(item) for item in history), float(delta), accountant)


@functools.lru_cache(maxsize=512)
def _cached_epsilon(history: tuple[Segment, ...], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    if accountant == "prv":
        epsilon = _prv_epsilon(history, delta)
        if epsilon is not None:
            return epsilon
    return _rdp_epsilon(history, delta)


def _rdp_epsilon(history: tuple[Segment, ...], delta: float) -> float:
    # Opacus' RDPAccountant.get_privacy_spent, step for step (same orders, same sum in history order,
    # so the same float), but each (σ, q) pair's one-step RDP is computed once per process: the
    # fractional orders cost ~85 ms per pair, and planning σ re-evaluates the whole history at every
    # bisection step, every round.
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum([_one_step_rdp(sigma, q) * steps for sigma, q, steps in history])
    with _loose_rdp_bound_allowed():
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    # A negative ε can come out of the RDP conversion for large δ; (0, δ)-DP still holds (Opacus PR #844).
    return max(float(epsilon), 0.0)


@functools.lru_cache(maxsize=4096)
def _one_step_rdp(sigma: float, q: float) -> np.ndarray:
    rdp = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    rdp.setflags(write=False)  # shared by every caller
    return rdp


@contextlib.contextmanager
def _loose_rdp_bound_allowed() -> Iterator[None]:
    # "Optimal order is the largest alpha" only says the RDP bound could be tighter; it is still valid.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


def _prv_epsilon(history: tuple[Segment, ...], delta: float) -> float | None:
    prv = PRVAccountant()
    prv.history = list(history)
    try:
        # PRV sizes its domain with RDP (same harmless warning); numeric overflow inside PRV surfaces
        # as a non-finite ε, which the check below turns into the RDP fallback.
        with _loose_rdp_bound_allowed(), np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            epsilon = float(prv.get_epsilon(delta=delta))  # upper bound of the PRV estimate
    except _PRV_FAILURES as error:
        log.warning("PRV accountant failed (%s); using the RDP bound instead", error)
        return None
    if not (0 <= epsilon < math.inf):
        log.warning("PRV accountant returned ε=%r; using the RDP bound instead", epsilon)
        return None
    return epsilon


def plan_noise_multiplier(
    *,
    budget_epsilon: float,
    delta: float,
    sample_rate: float | None = None,
    steps: int | None = None,
    round_shape: Iterable[tuple[float, int]] | None = None,
    rounds: int = 1,
    accountant: str = DEFAULT_ACCOUNTANT,
    already: Iterable[Segment] = (),
) -> float:
    """Choose σ so that the history so far plus the planned steps spends (almost) the whole budget.

    The planned steps are `steps` at `sample_rate`, or `rounds` rounds of `round_shape`, a list of
    (sample_rate, steps) per accountant entry of one round (one per task); all of them use σ.

    Args:
        budget_epsilon: the total ε the institution may ever spend.
        delta: the δ of the guarantee.
        sample_rate: q of the planned steps (with `steps`).
        steps: number of planned steps (with `sample_rate`).
        round_shape: instead of `sample_rate`/`steps`: the (q, steps) entries of one round.
        rounds: how many rounds of `round_shape` are planned.
        accountant: "rdp" or "prv".
        already: the history spent so far (run-length (σ, q, steps) list); empty for a fresh ledger.

    Returns:
        σ with ε_total(already + planned) <= budget_epsilon, and >= (1 - 1%)·budget_epsilon where
        the history leaves room for that. Verified with `compute_epsilon` before returning.

    Raises:
        BudgetExhausted: no σ up to Opacus' MAX_SIGMA keeps the total within the budget.
        ValueError: an argument is out of range, or both or neither of the two plan forms are given.
    """
    check_budget_args(budget_epsilon=budget_epsilon, delta=delta, accountant=accountant)
    planned = _planned_shape(sample_rate, steps, round_shape, rounds)
    history = tuple(as_segment(item) for item in already)

    def total_epsilon(sigma: float) -> float:
        segments = [(sigma, q, n) for q, n in planned]
        return compute_epsilon(history=extend_history(history, segments), delta=delta, accountant=accountant)

    sample_rates = {q for q, _ in planned}
    if not history and len(sample_rates) == 1:  # the case Opacus' own search covers
        sigma = _opacus_noise_multiplier(budget_epsilon, delta, sample_rates.pop(),
                                         sum(n for _, n in planned), accountant)
        if sigma is not None and total_epsilon(sigma) <= budget_epsilon:
            return sigma
    return _bisect_noise_multiplier(total_epsilon, budget_epsilon, history, delta, accountant)


def _planned_shape(sample_rate: float | None, steps: int | None,
                   round_shape: Iterable[tuple[float, int]] | None, rounds: int) -> tuple[tuple[float, int], ...]:
    if round_shape is None:
        if sample_rate is None or steps is None:
            raise ValueError("give sample_rate and steps, or round_shape")
        shape = [(sample_rate, steps)]
    elif (sample_rate, steps) != (None, None):
        raise ValueError("give either round_shape or sample_rate and steps, not both")
    else:
        shape = list(round_shape)
    if not is_int(rounds) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not shape or any(not isinstance(entry, (tuple, list)) or len(entry) != 2 for entry in shape):
        raise ValueError(f"round_shape must be a non-empty list of (sample_rate, steps), got {shape!r}")
    # σ is the unknown; q and steps go through the same checks as a recorded round.
    checked = [validate_segment(noise_multiplier=1.0, sample_rate=q, steps=n)[1:] for q, n in shape]
    return tuple(checked) * rounds


def _opacus_noise_multiplier(budget: float, delta: float, sample_rate: float, steps: int,
                             accountant: str) -> float | None:
    try:
        with _loose_rdp_bound_allowed():
            return get_noise_multiplier(target_epsilon=budget, target_delta=delta, sample_rate=sample_rate,
                                        steps=steps, accountant=accountant,
                                        epsilon_tolerance=_PLAN_TOLERANCE * budget)
    except _PRV_FAILURES as error:
        # Out of budget, or PRV failing at small σ: the bisection decides, with the RDP fallback.
        log.info("opacus get_noise_multiplier failed (%s); bisecting instead", error)
        return None


def _bisect_noise_multiplier(total_epsilon: Callable[[float], float], budget: float,
                             history: tuple[Segment, ...], delta: float, accountant: str) -> float:
    low, high = 0.0, 1.0
    while total_epsilon(high) > budget:  # bracket: ε(high) within budget, ε(low) over it (or low = 0)
        low, high = high, 2 * high
        if high > MAX_SIGMA:
            current = compute_epsilon(history=history, delta=delta, accountant=accountant)
            raise BudgetExhausted(BudgetCheck(budget, current, total_epsilon(MAX_SIGMA)))
    for _ in range(_MAX_BISECTIONS):
        if total_epsilon(high) >= (1 - _PLAN_TOLERANCE) * budget or high - low <= 1e-9 * high:
            break
        middle = (low + high) / 2
        low, high = (low, middle) if total_epsilon(middle) <= budget else (middle, high)
    return high  # the invariant ε(high) <= budget is the verification


def check_budget_args(*, budget_epsilon: float, delta: float, accountant: str) -> None:
    if not is_real(budget_epsilon) or not (0 < budget_epsilon < math.inf):
        raise ValueError(f"budget_epsilon must be a finite number > 0, got {budget_epsilon!r}")
    if not is_real(delta) or not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    _check_accountant(accountant)


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)

