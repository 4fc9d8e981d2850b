"""The institution's persistent, cumulative privacy ledger.

One JSON file in the institution's state directory holds every DP-SGD step the institution
ever took, as an Opacus-style run-length history of (noise multiplier, sample rate, steps),
plus one entry per round trained. ε is always recomputed from the whole history, so it
composes across rounds, runs and restarts (a new PrivacyEngine per round would report one
round only; reference notes §6).

Guarantees:
- ε is never under-reported: RDP by default (conservative); PRV returns its upper bound and
  falls back to RDP when it fails (pitfall P13).
- The budget is never passed: a round is gated before training (`check_budget`) and refused
  again when recorded (`record_round`).
- The ledger is never lost: writes are atomic (temp file, fsync, rename, fsync of the
  directory) under an exclusive lock; a file that is unreadable, torn, edited (checksum) or of
  an unknown version raises `LedgerError` and is left on disk untouched, never replaced.

File format (`LEDGER_FILENAME`, format `LEDGER_FORMAT`, version `LEDGER_VERSION`):
    {"format": "helixfed-privacy-ledger", "version": 1,
     "checksum": "sha256:<hex of the canonical JSON of payload>",
     "payload": {"institution", "accountant", "delta", "budget_epsilon", "created",
                 "history": [[sigma, q, steps], ...],
                 "rounds": [{"run_id", "round", "segments": [[sigma, q, steps], ...],
                             "epsilon", "time"}, ...],
                 "budget_changes": [{"time", "old", "new"}, ...]}}
The canonical JSON is sorted keys, no whitespace, ASCII, no NaN/Infinity. A round holds one
segment per accountant entry it spent (one per task for a multi-task institution, P15); `history`
is all rounds' segments in order, consecutive identical (σ, q) merged, and is checked against them.

A round is given either as one (noise_multiplier, sample_rate, steps) or as `segments`, a list of
such triples (e.g. each task's `engine.accountant.history`).

Budget changes: institution, δ and accountant are fixed for the life of a ledger (changing any
of them would make the recorded ε meaningless). The budget ε belongs to the institution's config
and may change: `open` records every change (time, old, new) in the file and logs a warning
when it is raised.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

LEDGER_FILENAME = "privacy_ledger.json"
LEDGER_FORMAT = "helixfed-privacy-ledger"
LEDGER_VERSION = 1
ACCOUNTANTS = ("rdp", "prv")  # "gdp" is excluded: a CLT approximation that under-reports ε
DEFAULT_ACCOUNTANT = "rdp"

_LOCK_SUFFIX = ".lock"
_TMP_SUFFIX = ".tmp"
_PLAN_TOLERANCE = 0.01  # plan σ so that ε_total lands in [(1 - tol)·budget, budget]
_MAX_BISECTIONS = 100
_PRV_FAILURES = (ValueError, RuntimeError, ArithmeticError, MemoryError)

log = logging.getLogger(__name__)

Segment = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps), as in Opacus' history


class LedgerError(ValueError):
    """The ledger file is missing, unreadable, corrupt, or belongs to another configuration."""


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


@dataclass(frozen=True)
class RoundEntry:
    """One round the institution trained in, and its cumulative ε after that round."""

    run_id: str
    round: int
    segments: tuple[Segment, ...]  # (σ, q, steps) per accountant entry of the round
    epsilon: float
    time: float

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.segments)


@dataclass(frozen=True)
class BudgetChange:
    """A change of the configured budget ε, kept so the audit trail shows it."""

    time: float
    old: float
    new: float


# ---------------------------------------------------------------- accounting


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
    if not _is_real(noise_multiplier) or not (0 < noise_multiplier < math.inf):
        raise ValueError(f"noise_multiplier must be a finite number > 0 (a round without noise has "
                         f"no finite ε), got {noise_multiplier!r}")
    if not _is_real(sample_rate) or not (0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return float(noise_multiplier), float(sample_rate), int(steps)


def _as_segment(item: Any) -> Segment:
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        raise ValueError(f"a segment is (noise_multiplier, sample_rate, steps), got {item!r}")
    return validate_segment(noise_multiplier=item[0], sample_rate=item[1], steps=item[2])


def _round_segments(noise_multiplier: float | None, sample_rate: float | None, steps: int | None,
                    segments: Iterable[Segment] | None) -> tuple[Segment, ...]:
    """A round given as one (σ, q, steps) or as a list of segments, checked."""
    single = (noise_multiplier, sample_rate, steps)
    if segments is None:
        if None in single:
            raise ValueError("give noise_multiplier, sample_rate and steps, or segments")
        return (validate_segment(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps),)
    if single != (None, None, None):
        raise ValueError("give either segments or noise_multiplier/sample_rate/steps, not both")
    checked = tuple(_as_segment(item) for item in segments)
    if not checked:
        raise ValueError("segments must hold at least one (noise_multiplier, sample_rate, steps)")
    return checked


def _extend(history: Iterable[Segment], segments: Iterable[Segment]) -> tuple[Segment, ...]:
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
    return _cached_epsilon(tuple(_as_segment(item) for item in history), float(delta), accountant)


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
    rdp = RDPAccountant()
    rdp.history = list(history)
    with _loose_rdp_bound_allowed():
        epsilon = float(rdp.get_epsilon(delta=delta))
    # A negative ε can come out of the RDP conversion for large δ; (0, δ)-DP still holds (Opacus PR #844).
    return max(epsilon, 0.0)


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
    _check_budget_args(budget_epsilon=budget_epsilon, delta=delta, accountant=accountant)
    planned = _planned_shape(sample_rate, steps, round_shape, rounds)
    history = tuple(_as_segment(item) for item in already)

    def total_epsilon(sigma: float) -> float:
        segments = [(sigma, q, n) for q, n in planned]
        return compute_epsilon(history=_extend(history, segments), delta=delta, accountant=accountant)

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
    if not _is_int(rounds) or rounds < 1:
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


# ---------------------------------------------------------------- the file


@dataclass(frozen=True)
class _State:
    """Everything the ledger file holds (its payload)."""

    institution: str
    accountant: str
    delta: float
    budget_epsilon: float
    created: float
    history: tuple[Segment, ...] = ()
    rounds: tuple[RoundEntry, ...] = ()
    budget_changes: tuple[BudgetChange, ...] = ()

    def to_payload(self) -> dict[str, Any]:
        return {
            "institution": self.institution, "accountant": self.accountant, "delta": self.delta,
            "budget_epsilon": self.budget_epsilon, "created": self.created,
            "history": [list(segment) for segment in self.history],
            "rounds": [{"run_id": entry.run_id, "round": entry.round, "epsilon": entry.epsilon,
                        "time": entry.time, "segments": [list(segment) for segment in entry.segments]}
                       for entry in self.rounds],
            "budget_changes": [asdict(change) for change in self.budget_changes],
        }


def _canonical(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _checksum(payload: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(payload).encode("ascii")).hexdigest()


def _serialise(state: _State) -> str:
    payload = state.to_payload()
    document = {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, "checksum": _checksum(payload),
                "payload": payload}
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _read_state(path: Path) -> _State | None:
    """Parse and verify the ledger at `path`; None only when no file exists there."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LedgerError(f"{path}: cannot read the privacy ledger: {error}") from error
    document = _parse_json(path, raw)
    payload = _verified_payload(path, document)
    return _parse_payload(path, payload)


def _parse_json(path: Path, raw: bytes) -> Any:
    def reject_constant(name: str) -> None:
        raise ValueError(f"non-finite number {name}")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError as error:
        raise LedgerError(f"{path}: privacy ledger is not UTF-8 text ({error}); torn or overwritten?") from error
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise LedgerError(f"{path}: privacy ledger is not valid JSON ({error}); torn or edited?") from error


def _verified_payload(path: Path, document: Any) -> dict[str, Any]:
    if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
        raise LedgerError(f"{path}: not a helixfed privacy ledger (expected format {LEDGER_FORMAT!r})")
    if document.get("version") != LEDGER_VERSION:
        raise LedgerError(f"{path}: privacy ledger version {document.get('version')!r} is not supported "
                          f"(this helixfed reads version {LEDGER_VERSION})")
    payload = document.get("payload")
    if not isinstance(payload, dict):
        raise LedgerError(f"{path}: privacy ledger has no 'payload' object")
    if document.get("checksum") != _checksum(payload):
        raise LedgerError(f"{path}: privacy ledger checksum mismatch (stored {document.get('checksum')!r}); "
                          "the file was edited or torn")
    return payload


def _parse_payload(path: Path, payload: dict[str, Any]) -> _State:
    field = _FieldReader(path, payload)
    state = _State(
        institution=field.get("institution", str),
        accountant=field.choice("accountant", ACCOUNTANTS),
        delta=field.number("delta", low=0, high=1),
        budget_epsilon=field.number("budget_epsilon", low=0),
        created=field.number("created"),
        history=tuple(field.each("history", _parse_segment)),
        rounds=tuple(field.each("rounds", _parse_round)),
        budget_changes=tuple(field.each("budget_changes", _parse_budget_change)),
    )
    _check_consistent(path, state)
    return state


def _check_consistent(path: Path, state: _State) -> None:
    rebuilt = _extend((), (segment for entry in state.rounds for segment in entry.segments))
    if rebuilt != state.history:
        raise LedgerError(f"{path}: privacy ledger 'history' does not match its 'rounds' "
                          f"({sum(s[2] for s in state.history)} vs {sum(s[2] for s in rebuilt)} steps)")


class _FieldReader:
    """Reads typed fields from a JSON object; every error names the file and the key path."""

    def __init__(self, path: Path, obj: Any, where: str = "payload"):
        if not isinstance(obj, dict):
            raise LedgerError(f"{path}: {where} must be an object, got {type(obj).__name__}")
        self.path, self.obj, self.where = path, obj, where

    def fail(self, key: str, expected: str) -> LedgerError:
        value = self.obj.get(key, "<missing>")
        return LedgerError(f"{self.path}: {self.where}.{key} must be {expected}, got {value!r}")

    def get(self, key: str, kind: type) -> Any:
        value = self.obj.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self.fail(key, f"a {kind.__name__}")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.obj.get(key)
        if value not in choices:
            raise self.fail(key, f"one of {choices}")
        return value

    def number(self, key: str, *, low: float = -math.inf, high: float = math.inf) -> float:
        value = self.obj.get(key)
        if not _is_real(value) or not (low < value < high) or math.isinf(value):
            raise self.fail(key, f"a finite number in ({low}, {high})")
        return float(value)

    def integer(self, key: str, *, low: int) -> int:
        value = self.obj.get(key)
        if not _is_int(value) or value < low:
            raise self.fail(key, f"an integer >= {low}")
        return int(value)

    def each(self, key: str, parse: Callable[[_FieldReader, Any, str], Any]) -> Iterator[Any]:
        items = self.obj.get(key)
        if not isinstance(items, list):
            raise self.fail(key, "a list")
        for index, item in enumerate(items):
            yield parse(self, item, f"{self.where}.{key}[{index}]")


def _parse_segment(reader: _FieldReader, item: Any, where: str) -> Segment:
    try:
        return _as_segment(item)
    except ValueError as error:
        raise LedgerError(f"{reader.path}: {where}: {error}") from error


def _parse_round(reader: _FieldReader, item: Any, where: str) -> RoundEntry:
    field = _FieldReader(reader.path, item, where)
    segments = tuple(field.each("segments", _parse_segment))
    if not segments:
        raise field.fail("segments", "a non-empty list")
    return RoundEntry(run_id=field.get("run_id", str), round=field.integer("round", low=0), segments=segments,
                      epsilon=field.number("epsilon"), time=field.number("time"))


def _parse_budget_change(reader: _FieldReader, item: Any, where: str) -> BudgetChange:
    field = _FieldReader(reader.path, item, where)
    return BudgetChange(time=field.number("time"), old=field.number("old", low=0),
                        new=field.number("new", low=0))


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` by `text` so that a crash at any moment leaves the old or the new file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)  # makes the rename itself durable


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temp_files(path: Path) -> None:
    # Left by a writer killed mid-write; only called under the lock, so no writer is using them.
    for stale in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise read-modify-write cycles between processes sharing one state directory."""
    fd = os.open(path.with_name(path.name + _LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel even if the process is killed
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the ledger


class PrivacyLedger:
    """The institution's cumulative (ε, δ) account, persisted in its state directory."""

    def __init__(self, path: Path, state: _State):
        """Use `PrivacyLedger.open` or `PrivacyLedger.load`; this only wraps a verified state."""
        self._path = path
        self._state = state
        # The budget this process was configured with; if another process sharing the state directory
        # changes the file's budget meanwhile, the stricter of the two is enforced.
        self._configured_budget = state.budget_epsilon

    # -- opening

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, institution: str, budget_epsilon: float,
             delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> PrivacyLedger:
        """Open the institution's ledger for training, creating it only if no ledger file exists.

        Args:
            state_dir: the institution's state directory (created if missing).
            institution: the institution's name; must match the ledger's.
            budget_epsilon: the total ε the institution allows; a change is recorded in the file.
            delta: the δ of the guarantee; must match the ledger's.
            accountant: "rdp" (default, conservative) or "prv"; must match the ledger's.

        Returns:
            The ledger, continuing every step already recorded.

        Raises:
            LedgerError: the file is unreadable, corrupt, of another version, or was made for another
                institution, δ or accountant.
            ValueError: an argument is out of range.
        """
        _check_budget_args(budget_epsilon=budget_epsilon, delta=delta, accountant=accountant)
        if not institution or not isinstance(institution, str):
            raise ValueError(f"institution must be a non-empty string, got {institution!r}")
        path = Path(state_dir) / LEDGER_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(path):
            stored = _read_state(path)
            if stored is None:
                state = _State(institution=institution, accountant=accountant, delta=float(delta),
                               budget_epsilon=float(budget_epsilon), created=time.time())
            else:
                _check_identity(path, stored, institution=institution, delta=delta, accountant=accountant)
                state = _with_budget(stored, float(budget_epsilon))
            if state != stored:
                _atomic_write(path, _serialise(state))
        return cls(path, state)

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> PrivacyLedger:
        """Read an existing ledger without changing it (for reports).

        Args:
            state_dir: the institution's state directory.

        Returns:
            The ledger as stored.

        Raises:
            LedgerError: there is no ledger there, or it is unreadable, corrupt or of another version.
        """
        path = Path(state_dir) / LEDGER_FILENAME
        state = _read_state(path)
        if state is None:
            raise LedgerError(f"{path}: no privacy ledger here (has this institution trained yet?)")
        return cls(path, state)

    # -- what it holds

    @property
    def path(self) -> Path:
        return self._path

    @property
    def institution(self) -> str:
        return self._state.institution

    @property
    def accountant(self) -> str:
        return self._state.accountant

    @property
    def delta(self) -> float:
        return self._state.delta

    @property
    def budget_epsilon(self) -> float:
        return min(self._configured_budget, self._state.budget_epsilon)

    @property
    def history(self) -> tuple[Segment, ...]:
        return self._state.history

    @property
    def rounds(self) -> tuple[RoundEntry, ...]:
        return self._state.rounds

    @property
    def budget_changes(self) -> tuple[BudgetChange, ...]:
        return self._state.budget_changes

    @property
    def total_steps(self) -> int:
        return sum(steps for _, _, steps in self._state.history)

    # -- accounting

    def epsilon(self) -> float:
        """ε spent so far over the whole history (never a lower bound)."""
        return self._epsilon_of(self._state.history)

    def projected_epsilon(self, *, noise_multiplier: float | None = None, sample_rate: float | None = None,
                          steps: int | None = None, segments: Iterable[Segment] | None = None) -> float:
        """ε after a planned round, added to the whole history.

        Args:
            noise_multiplier: σ of the planned round (with sample_rate and steps).
            sample_rate: q of the planned round.
            steps: number of optimizer steps of the planned round.
            segments: instead of the three above: the round's (σ, q, steps) entries, e.g. one per task.

        Returns:
            The cumulative ε the ledger would hold after that round.

        Raises:
            ValueError: an argument is out of range, or both or neither round forms are given.
        """
        planned = _round_segments(noise_multiplier, sample_rate, steps, segments)
        return self._epsilon_of(_extend(self._state.history, planned))

    def check_budget(self, *, noise_multiplier: float | None = None, sample_rate: float | None = None,
                     steps: int | None = None, segments: Iterable[Segment] | None = None) -> BudgetCheck:
        """The pre-round budget gate: whether the planned round fits, with the numbers.

        Args:
            noise_multiplier: σ of the planned round (with sample_rate and steps).
            sample_rate: q of the planned round.
            steps: number of optimizer steps of the planned round.
            segments: instead of the three above: the round's (σ, q, steps) entries, e.g. one per task.

        Returns:
            The budget, the ε spent so far and the ε after the planned round; `allowed` says whether
            the round may be trained.

        Raises:
            ValueError: an argument is out of range, or both or neither round forms are given.
        """
        projected = self.projected_epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                           steps=steps, segments=segments)
        return BudgetCheck(self.budget_epsilon, self.epsilon(), projected)

    def can_afford(self, *, noise_multiplier: float | None = None, sample_rate: float | None = None,
                   steps: int | None = None, segments: Iterable[Segment] | None = None) -> bool:
        """Whether the planned round fits in the budget; see `check_budget` for the arguments."""
        return self.check_budget(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                                 segments=segments).allowed

    def require_budget(self, *, noise_multiplier: float | None = None, sample_rate: float | None = None,
                       steps: int | None = None, segments: Iterable[Segment] | None = None) -> BudgetCheck:
        """The budget gate as an exception, for callers that must not go on.

        Args:
            noise_multiplier: σ of the planned round (with sample_rate and steps).
            sample_rate: q of the planned round.
            steps: number of optimizer steps of the planned round.
            segments: instead of the three above: the round's (σ, q, steps) entries.

        Returns:
            The check, when the round fits in the budget.

        Raises:
            BudgetExhausted: the round would take ε past the budget (`.check` holds the numbers).
            ValueError: an argument is out of range, or both or neither round forms are given.
        """
        check = self.check_budget(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                                  segments=segments)
        if not check.allowed:
            raise BudgetExhausted(check, institution=self.institution)
        return check

    def plan_noise_multiplier(self, *, sample_rate: float | None = None, steps: int | None = None,
                              round_shape: Iterable[tuple[float, int]] | None = None, rounds: int = 1) -> float:
        """σ for the planned steps that spends (almost) all the budget left.

        Args:
            sample_rate: q of the planned steps (with steps).
            steps: number of planned steps.
            round_shape: instead of the two above: the (q, steps) entries of one round, one per task.
            rounds: how many rounds of `round_shape` are still planned.

        Returns:
            σ with the total ε within the budget (see the module function `plan_noise_multiplier`).

        Raises:
            BudgetExhausted: no σ keeps the total within the budget.
            ValueError: an argument is out of range.
        """
        return plan_noise_multiplier(budget_epsilon=self.budget_epsilon, delta=self.delta,
                                     sample_rate=sample_rate, steps=steps, round_shape=round_shape,
                                     rounds=rounds, accountant=self.accountant, already=self.history)

    # -- recording

    def record_round(self, *, run_id: str | int, round: int, noise_multiplier: float | None = None,
                     sample_rate: float | None = None, steps: int | None = None,
                     segments: Iterable[Segment] | None = None) -> RoundEntry:
        """Add a trained round to the history and write the ledger atomically.

        Call it before the round's weights leave the institution: when it raises, they must not be
        sent. Every call records: a round trained twice (e.g. retried after a crash) spends twice.

        Args:
            run_id: the federation run's id.
            round: the server round number.
            noise_multiplier: σ used in the round (with sample_rate and steps).
            sample_rate: q used in the round.
            steps: optimizer steps actually taken in the round.
            segments: instead of the three above: the round's (σ, q, steps) entries as the
                accountants recorded them, e.g. each task's `engine.accountant.history`.

        Returns:
            The entry written, with the cumulative ε after the round.

        Raises:
            BudgetExhausted: the round would take ε past the budget; nothing is written.
            LedgerError: the file on disk became unreadable, or no longer holds the rounds this object
                has seen (replaced or restored from a backup); nothing is written.
            ValueError: an argument is out of range, or both or neither round forms are given.
        """
        spent = _round_segments(noise_multiplier, sample_rate, steps, segments)
        if not _is_int(round) or round < 0:
            raise ValueError(f"round must be an integer >= 0, got {round!r}")
        with _exclusive_lock(self._path):
            state = self._reload()  # another process may have recorded since we read the file
            history = _extend(state.history, spent)
            budget = min(self._configured_budget, state.budget_epsilon)
            check = BudgetCheck(budget, self._epsilon_of(state.history), self._epsilon_of(history))
            if not check.allowed:
                raise BudgetExhausted(check, institution=state.institution)
            entry = RoundEntry(run_id=str(run_id), round=int(round), segments=spent, epsilon=check.projected,
                               time=time.time())
            state = replace(state, history=history, rounds=state.rounds + (entry,))
            _remove_stale_temp_files(self._path)
            _atomic_write(self._path, _serialise(state))
        self._state = state
        return entry

    def _reload(self) -> _State:
        state = _read_state(self._path)
        if state is None:
            raise LedgerError(f"{self._path}: privacy ledger disappeared while in use; refusing to start "
                              "a new one")
        _check_identity(self._path, state, institution=self.institution, delta=self.delta,
                        accountant=self.accountant)
        known = self._state.rounds
        if state.rounds[:len(known)] != known:
            raise LedgerError(f"{self._path}: privacy ledger on disk no longer holds the {len(known)} rounds "
                              "this process recorded or read (replaced or restored from a backup?)")
        return state

    def _epsilon_of(self, history: tuple[Segment, ...]) -> float:
        return compute_epsilon(history=history, delta=self._state.delta, accountant=self._state.accountant)


# ---------------------------------------------------------------- small helpers


def _check_identity(path: Path, state: _State, *, institution: str, delta: float, accountant: str) -> None:
    for name, stored, given in (("institution", state.institution, institution),
                                ("delta", state.delta, float(delta)),
                                ("accountant", state.accountant, accountant)):
        if stored != given:
            raise LedgerError(f"{path}: privacy ledger was kept with {name}={stored!r}, but {given!r} was "
                              f"given; an existing ledger's {name} cannot change")


def _with_budget(state: _State, budget_epsilon: float) -> _State:
    if budget_epsilon == state.budget_epsilon:
        return state
    if budget_epsilon > state.budget_epsilon:
        log.warning("institution %r raises its privacy budget from ε=%g to ε=%g",
                    state.institution, state.budget_epsilon, budget_epsilon)
    change = BudgetChange(time=time.time(), old=state.budget_epsilon, new=budget_epsilon)
    return replace(state, budget_epsilon=budget_epsilon, budget_changes=state.budget_changes + (change,))


def _check_budget_args(*, budget_epsilon: float, delta: float, accountant: str) -> None:
    if not _is_real(budget_epsilon) or not (0 < budget_epsilon < math.inf):
        raise ValueError(f"budget_epsilon must be a finite number > 0, got {budget_epsilon!r}")
    if not _is_real(delta) or not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    _check_accountant(accountant)


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
