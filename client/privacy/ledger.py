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
  directory) under an exclusive lock; a file that is unreadable, torn, edited (keyed MAC) or of
  an unknown version raises `LedgerError` and is left on disk untouched, never replaced.
- Editing is evident: the payload is sealed with HMAC-SHA256 under the institution's ledger key
  (see `client.privacy.ledger_file` for what that does and does not protect against).

File format (`LEDGER_FILENAME`, format `LEDGER_FORMAT`, version `LEDGER_VERSION`):
    {"format": "helixfed-privacy-ledger", "version": 2,
     "mac": "hmac-sha256:<hex of HMAC(key, canonical JSON of payload)>",
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

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from client.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_ACCOUNTANT,
    BudgetCheck,
    BudgetExhausted,
    Segment,
    check_budget_args,
    compute_epsilon,
    extend_history,
    is_int,
    plan_noise_multiplier,
    round_segments,
    validate_segment,
)
from client.privacy.ledger_file import (
    KEY_FILENAME,
    LEDGER_FORMAT,
    LEDGER_VERSION,
    BudgetChange,
    LedgerError,
    LedgerState,
    RoundEntry,
    create_key,
    earlier_traces,
    exclusive_lock,
    lock_path,
    mark_created,
    read_key,
    read_state,
    remove_stale_temp_files,
    write_state,
)

__all__ = ["ACCOUNTANTS", "DEFAULT_ACCOUNTANT", "KEY_FILENAME", "LEDGER_FILENAME", "LEDGER_FORMAT", "LEDGER_VERSION", "BudgetChange",
           "BudgetCheck", "BudgetExhausted", "LedgerError", "PrivacyLedger", "RoundEntry", "Segment",
           "compute_epsilon", "plan_noise_multiplier", "validate_segment"]

LEDGER_FILENAME = "privacy_ledger.json"

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the ledger


class PrivacyLedger:
    """The institution's cumulative (ε, δ) account, persisted in its state directory."""

    def __init__(self, path: Path, state: LedgerState, key: bytes | None):
        """Use `PrivacyLedger.open` or `PrivacyLedger.load`; this only wraps a verified state."""
        self._path = path
        self._state = state
        self._key = key  # None only for a version-1 ledger loaded read-only
        # The budget this process was configured with; if another process sharing the state directory
        # changes the file's budget meanwhile, the stricter of the two is enforced.
        self._configured_budget = state.budget_epsilon

    # -- opening

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], *, institution: str, budget_epsilon: float,
             delta: float, accountant: str = DEFAULT_ACCOUNTANT,
             key_file: str | os.PathLike[str] | None = None) -> PrivacyLedger:
        """Open the institution's ledger for training, creating it only if no ledger file exists.

        Args:
            state_dir: the institution's state directory (created if missing).
            institution: the institution's name; must match the ledger's.
            budget_epsilon: the total ε the institution allows; a change is recorded in the file.
            delta: the δ of the guarantee; must match the ledger's.
            accountant: "rdp" (default, conservative) or "prv"; must match the ledger's.
            key_file: the key sealing the ledger (default `KEY_FILENAME` in `state_dir`); created with
                a new ledger, or when a version-1 (unkeyed) ledger is upgraded.

        Returns:
            The ledger, continuing every step already recorded.

        Raises:
            LedgerError: the file is unreadable, corrupt, edited, of another version, sealed with another
                key or its key is missing, or was made for another institution, δ or accountant.
            ValueError: an argument is out of range.
        """
        check_budget_args(budget_epsilon=budget_epsilon, delta=delta, accountant=accountant)
        if not institution or not isinstance(institution, str):
            raise ValueError(f"institution must be a non-empty string, got {institution!r}")
        path = Path(state_dir) / LEDGER_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)  # the institution's own state: not for other users, whatever the umask
        key_path = _key_path(path, key_file)
        had_lock = lock_path(path).exists()  # before we create it: a lock left by an earlier ledger
        with exclusive_lock(path):
            key = read_key(key_path)
            stored = read_state(path, key, allow_unkeyed=True)
            upgrade = stored is not None and key is None  # a version-1 ledger from before keys
            if stored is None:
                _refuse_to_restart(path, earlier_traces(path, had_lock=had_lock))
                state = LedgerState(institution=institution, accountant=accountant, delta=float(delta),
                               budget_epsilon=float(budget_epsilon), created=time.time())
                mark_created(path, institution)
            else:
                _check_identity(path, stored, institution=institution, delta=delta, accountant=accountant)
                mark_created(path, stored.institution)  # ledgers from before the marker existed get one
                state = _with_budget(stored, float(budget_epsilon))
            if key is None:
                key = create_key(key_path)
            if upgrade:
                log.warning("%s: unkeyed (version 1) ledger sealed with the new key %s", path, key_path)
            if state != stored or upgrade:
                write_state(path, state, key)
        return cls(path, state, key)

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str], *,
             key_file: str | os.PathLike[str] | None = None) -> PrivacyLedger:
        """Read an existing ledger without changing it (for reports).

        Args:
            state_dir: the institution's state directory.
            key_file: the key sealing the ledger (default `KEY_FILENAME` in `state_dir`).

        Returns:
            The ledger as stored (a version-1 ledger, read where no key exists, cannot record rounds).

        Raises:
            LedgerError: there is no ledger there, or it is unreadable, corrupt, edited, of another
                version, or its key is missing or another.
        """
        path = Path(state_dir) / LEDGER_FILENAME
        key = read_key(_key_path(path, key_file))
        state = read_state(path, key, allow_unkeyed=True)
        if state is None:
            raise LedgerError(f"{path}: no privacy ledger here (has this institution trained yet?)")
        return cls(path, state, key)

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
        planned = round_segments(noise_multiplier, sample_rate, steps, segments)
        return self._epsilon_of(extend_history(self._state.history, planned))

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
        spent = round_segments(noise_multiplier, sample_rate, steps, segments)
        if not is_int(round) or round < 0:
            raise ValueError(f"round must be an integer >= 0, got {round!r}")
        if self._key is None:
            raise LedgerError(f"{self._path}: an unkeyed ledger loaded read-only cannot record rounds; "
                              "open it with PrivacyLedger.open")
        with exclusive_lock(self._path):
            state = self._reload()  # another process may have recorded since we read the file
            history = extend_history(state.history, spent)
            budget = min(self._configured_budget, state.budget_epsilon)
            check = BudgetCheck(budget, self._epsilon_of(state.history), self._epsilon_of(history))
            if not check.allowed:
                raise BudgetExhausted(check, institution=state.institution)
            entry = RoundEntry(run_id=str(run_id), round=int(round), segments=spent, epsilon=check.projected,
                               time=time.time())
            state = replace(state, history=history, rounds=state.rounds + (entry,))
            remove_stale_temp_files(self._path)
            write_state(self._path, state, self._key)
        self._state = state
        return entry

    def _reload(self) -> LedgerState:
        state = read_state(self._path, self._key)
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


def _refuse_to_restart(path: Path, traces: list[Path]) -> None:
    if traces:
        temps = [t for t in traces if t.name.endswith(".tmp")]
        promote = (f" A temp file may hold the last ledger: check and restore it with `helixfed privacy "
                   f"--state-dir {path.parent} --promote {temps[0]}`." if temps else "")
        raise LedgerError(
            f"{path}: no privacy ledger, but traces of an earlier one ({', '.join(t.name for t in traces)}); "
            f"refusing to start again from epsilon 0.{promote} Restore the ledger from a backup if you have "
            f"one; only if this institution never trained here, delete those files by hand.")


def promote_temp_file(state_dir: str | os.PathLike[str], candidate: str | os.PathLike[str], *,
                      key_file: str | os.PathLike[str] | None = None) -> PrivacyLedger:
    """Restore a ledger from a temp file a crash left behind, after verifying it (format, MAC under
    the institution's key, history); refused when a ledger exists. The temp file is kept."""
    path = Path(state_dir) / LEDGER_FILENAME
    candidate = Path(candidate)
    key_path = _key_path(path, key_file)
    with exclusive_lock(path):
        if path.exists():
            raise LedgerError(f"{path}: a ledger exists; nothing to promote")
        key = read_key(key_path)
        state = read_state(candidate, key, allow_unkeyed=True)
        if state is None:
            raise LedgerError(f"{candidate}: no such file")
        key = key if key is not None else create_key(key_path)
        write_state(path, state, key)
        mark_created(path, state.institution)
    ledger = PrivacyLedger(path, state, key)
    log.warning("%s: ledger restored from %s (epsilon %.4f)", path, candidate, ledger.epsilon())
    return ledger


def _key_path(ledger_path: Path, key_file: str | os.PathLike[str] | None) -> Path:
    return Path(key_file) if key_file is not None else ledger_path.with_name(KEY_FILENAME)


def _check_identity(path: Path, state: LedgerState, *, institution: str, delta: float, accountant: str) -> None:
    for name, stored, given in (("institution", state.institution, institution),
                                ("delta", state.delta, float(delta)),
                                ("accountant", state.accountant, accountant)):
        if stored != given:
            raise LedgerError(f"{path}: privacy ledger was kept with {name}={stored!r}, but {given!r} was "
                              f"given; an existing ledger's {name} cannot change")


def _with_budget(state: LedgerState, budget_epsilon: float) -> LedgerState:
    if budget_epsilon == state.budget_epsilon:
        return state
    if budget_epsilon > state.budget_epsilon:
        log.warning("institution %r raises its privacy budget from ε=%g to ε=%g",
                    state.institution, state.budget_epsilon, budget_epsilon)
    change = BudgetChange(time=time.time(), old=state.budget_epsilon, new=budget_epsilon)
    return replace(state, budget_epsilon=budget_epsilon, budget_changes=state.budget_changes + (change,))
