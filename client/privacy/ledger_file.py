"""The ledger's file: a JSON document sealed with a keyed MAC, parsed strictly, written atomically
(temp file, fsync, rename, fsync of the directory) under an exclusive lock.

Why keyed: an unkeyed checksum (version 1, sha256 of the payload) only catches torn files; whoever
edits the history can recompute it and lower ε. Version 2 seals the payload with HMAC-SHA256 under
a per-institution secret (``privacy_ledger.key``, 32 random bytes, 0600), created with the ledger.
Without the key nobody can produce a ledger this agent accepts; with it, anybody can — so an
institution that wants protection against people who may write its state directory keeps the key
elsewhere (``privacy.ledger_key``, e.g. beside the SuperNode key). A version-1 ledger is read once
where no key exists yet and rewritten as version 2; where a key exists, a version-1 file is refused
(it would be a downgrade)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from client.privacy.accounting import ACCOUNTANTS, Segment, as_segment, extend_history, is_int, is_real
from common.atomic import TEMP_SUFFIX, atomic_write_text, fsync_directory

LEDGER_FORMAT = "helixfed-privacy-ledger"
LEDGER_VERSION = 2
_UNKEYED_VERSION = 1  # sha256 checksum only: read where no key exists yet, then rewritten as version 2
KEY_FILENAME = "privacy_ledger.key"
_KEY_BYTES = 32
_LOCK_SUFFIX = ".lock"
_TMP_SUFFIX = TEMP_SUFFIX  # what atomic_write_text leaves behind if killed


class LedgerError(ValueError):
    """The ledger file is missing, unreadable, corrupt, or belongs to another configuration."""


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




@dataclass(frozen=True)
class LedgerState:
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


def _mac(key: bytes, payload: Mapping[str, Any]) -> str:
    return "hmac-sha256:" + hmac.new(key, _canonical(payload).encode("ascii"), hashlib.sha256).hexdigest()


def _serialise(state: LedgerState, key: bytes) -> str:
    payload = state.to_payload()
    document = {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, "mac": _mac(key, payload), "payload": payload}
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"


# ---------------------------------------------------------------- the key


def _read_if_present(path: Path, what: str) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LedgerError(f"{path}: cannot read the {what}: {error}") from error


def read_key(path: Path) -> bytes | None:
    """The ledger key at ``path`` (64 hex digits and a newline); None only when no file exists there."""
    text = _read_if_present(path, "privacy ledger key")
    if text is None:
        return None
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise LedgerError(f"{path}: not a privacy ledger key (expected {2 * _KEY_BYTES} hex digits)")
    return key


def create_key(path: Path) -> bytes:
    """A new random key at ``path`` (0600 from the first byte); an existing key is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key(path)  # made meanwhile by another process: use that one
    try:
        os.write(fd, (key.hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)  # a key kept outside the state dir must survive a power cut too
    return key


# ---------------------------------------------------------------- reading


def read_state(path: Path, key: bytes | None, *, allow_unkeyed: bool = False) -> LedgerState | None:
    """Parse and verify the ledger at `path` with `key`; None only when no file exists there.

    A version-1 (unkeyed) file is accepted only with ``allow_unkeyed`` and no key: where a key exists,
    an unkeyed ledger is a downgrade. A version-2 file without a key cannot be verified and is refused.
    """
    raw = _read_if_present(path, "privacy ledger")
    if raw is None:
        return None
    document = _parse_json(path, raw)
    payload = _verified_payload(path, document, key, allow_unkeyed=allow_unkeyed)
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


def _verified_payload(path: Path, document: Any, key: bytes | None, *, allow_unkeyed: bool) -> dict[str, Any]:
    if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
        raise LedgerError(f"{path}: not a helixfed privacy ledger (expected format {LEDGER_FORMAT!r})")
    version = document.get("version")
    if version not in (LEDGER_VERSION, _UNKEYED_VERSION):
        raise LedgerError(f"{path}: privacy ledger version {version!r} is not supported "
                          f"(this helixfed reads versions {_UNKEYED_VERSION} and {LEDGER_VERSION})")
    payload = document.get("payload")
    if not isinstance(payload, dict):
        raise LedgerError(f"{path}: privacy ledger has no 'payload' object")
    if version == _UNKEYED_VERSION:
        if key is not None or not allow_unkeyed:
            raise LedgerError(f"{path}: unkeyed (version 1) privacy ledger where a ledger key exists; a keyed "
                              "ledger was replaced by an unkeyed one (downgrade or restore of an old backup)")
        if document.get("checksum") != _checksum(payload):
            raise LedgerError(f"{path}: privacy ledger checksum mismatch (stored {document.get('checksum')!r}); "
                              "the file was edited or torn")
        return payload
    if key is None:
        raise LedgerError(f"{path}: the privacy ledger is sealed with a key, but the key file is missing; "
                          f"restore it (privacy.ledger_key, default {KEY_FILENAME} in the state directory) "
                          "— without it the ledger cannot be verified")
    stored = document.get("mac")
    if not isinstance(stored, str) or not hmac.compare_digest(stored, _mac(key, payload)):
        raise LedgerError(f"{path}: privacy ledger MAC mismatch: the file was edited or torn, or sealed with "
                          "another key")
    return payload


def _parse_payload(path: Path, payload: dict[str, Any]) -> LedgerState:
    field = _FieldReader(path, payload)
    state = LedgerState(
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


def _check_consistent(path: Path, state: LedgerState) -> None:
    rebuilt = extend_history((), (segment for entry in state.rounds for segment in entry.segments))
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
        if not is_real(value) or not (low < value < high) or math.isinf(value):
            raise self.fail(key, f"a finite number in ({low}, {high})")
        return float(value)

    def integer(self, key: str, *, low: int) -> int:
        value = self.obj.get(key)
        if not is_int(value) or value < low:
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
        return as_segment(item)
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


def write_state(path: Path, state: LedgerState, key: bytes) -> None:
    """Replace the ledger at `path` by `state`, sealed with `key`, so that a crash at any moment leaves
    the old or the new file."""
    atomic_write_text(path, _serialise(state, key), mode=0o600)  # the institution's own record: not for other users


def remove_stale_temp_files(path: Path) -> None:
    # Left by a writer killed mid-write; only called under the lock, so no writer is using them.
    for stale in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


CREATED_SUFFIX = ".created"  # written beside a ledger when it is first created; never removed


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + _LOCK_SUFFIX)


def mark_created(path: Path, institution: str) -> None:
    """Leave a lasting trace that a ledger was created here, so its loss is never taken for a new start."""
    marker = path.with_name(path.name + CREATED_SUFFIX)
    if not marker.exists():
        atomic_write_text(marker, json.dumps({"institution": institution, "created": time.time()}) + "\n",
                          mode=0o600)


def earlier_traces(path: Path, *, had_lock: bool) -> list[Path]:
    """What an earlier ledger at ``path`` leaves behind: its creation marker, its lock file (when it
    existed before this process made one), temp files of interrupted writes."""
    traces = [path.with_name(path.name + CREATED_SUFFIX)] + ([lock_path(path)] if had_lock else [])
    traces = [t for t in traces if t.exists()]
    return traces + sorted(path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"))


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise read-modify-write cycles between processes sharing one state directory."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel even if the process is killed
        yield
    finally:
        os.close(fd)


