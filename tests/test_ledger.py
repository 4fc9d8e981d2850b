"""The institution's privacy ledger: golden ε values, composition across rounds and restarts,
the budget gate, crash safety and corrupt files. Real Opacus and dp_accounting, real files."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import dp_accounting
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from client.commands.privacy import add_privacy_parser
from client.privacy.ledger import (
    KEY_FILENAME,
    LEDGER_FILENAME,
    BudgetExhausted,
    LedgerError,
    PrivacyLedger,
    compute_epsilon,
    plan_noise_multiplier,
)

DELTA = 1e-5
# Reference notes §6: one client, N=256, batch 16 (q=1/16), σ=1, one epoch (16 steps) per round,
# trains in rounds {1, 2, 4, 5} of 6.
FL_SIGMA, FL_Q, FL_STEPS, FL_ROUNDS = 1.0, 1 / 16, 16, (1, 2, 4, 5)
FL_EPSILONS = (2.764, 3.336, 3.798, 4.203)  # ε after each round it trained in (RDP)
HELPER = Path(__file__).with_name("ledger_writer_child.py")


def open_ledger(state_dir, *, budget=8.0, accountant="rdp", institution="lab-a", delta=DELTA):
    return PrivacyLedger.open(state_dir, institution=institution, budget_epsilon=budget, delta=delta,
                              accountant=accountant)


def record_fl_rounds(ledger, rounds=FL_ROUNDS):
    return [ledger.record_round(run_id="run-1", round=r, noise_multiplier=FL_SIGMA, sample_rate=FL_Q,
                                steps=FL_STEPS).epsilon for r in rounds]


def fl_dp_accounting_epsilon(orders=None):
    accountant = dp_accounting.rdp.RdpAccountant(orders) if orders else dp_accounting.rdp.RdpAccountant()
    round_event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(FL_Q, dp_accounting.GaussianDpEvent(FL_SIGMA)), FL_STEPS)
    for _ in FL_ROUNDS:
        accountant.compose(round_event)
    return accountant.get_epsilon(DELTA)


# ---------------------------------------------------------------- golden values and composition


def test_rdp_golden_epsilon(tmp_path):
    ledger = open_ledger(tmp_path, budget=10.0)

    ledger.record_round(run_id="r", round=1, noise_multiplier=1.0, sample_rate=0.01, steps=1000)

    assert ledger.epsilon() == pytest.approx(2.10137, rel=1e-4)  # reference notes §5


def test_prv_golden_epsilon_is_the_upper_bound():
    epsilon = compute_epsilon(history=[(1.0, 0.01, 1000)], delta=DELTA, accountant="prv")

    # Reference notes §5: PRV upper bound 1.8384; dp_accounting's PLD estimate is 1.8282.
    assert epsilon == pytest.approx(1.8384, abs=1e-3)
    assert epsilon >= 1.8282



@settings(max_examples=12, deadline=None)  # each example runs Opacus' accountant (~1 s)
@given(st.lists(st.tuples(st.floats(0.3, 8.0), st.floats(1e-4, 1.0), st.integers(1, 5000)), min_size=1, max_size=10),
       st.sampled_from([1e-5, 1e-3, 0.3]))
def test_rdp_epsilon_is_bit_identical_to_opacus_accountant(history, delta):
    # The ledger caches each (σ, q)'s one-step RDP; the result must be Opacus' own, to the last bit.
    opacus = RDPAccountant()
    opacus.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = max(float(opacus.get_epsilon(delta=delta)), 0.0)

    assert compute_epsilon(history=history, delta=delta, accountant="rdp") == expected

def test_epsilon_accumulates_over_the_rounds_a_client_trains_in(tmp_path):
    ledger = open_ledger(tmp_path)

    epsilons = record_fl_rounds(ledger)

    single = RDPAccountant()
    single.history = [(FL_SIGMA, FL_Q, FL_STEPS * len(FL_ROUNDS))]
    assert epsilons == pytest.approx(FL_EPSILONS, abs=1e-3)
    assert ledger.epsilon() == pytest.approx(single.get_epsilon(delta=DELTA), rel=1e-12)
    assert ledger.history == ((FL_SIGMA, FL_Q, 64),)  # identical (σ, q) merged, as Opacus does


def test_cumulative_epsilon_matches_dp_accounting_at_integer_orders(tmp_path):
    ledger = open_ledger(tmp_path)
    record_fl_rounds(ledger)
    orders = list(range(2, 64))

    ours = RDPAccountant()
    ours.history = list(ledger.history)
    epsilon, _ = ours.get_privacy_spent(delta=DELTA, alphas=orders)

    # At integer orders both libraries use the exact closed form: the composed history must agree.
    assert epsilon == pytest.approx(fl_dp_accounting_epsilon(orders), rel=1e-6)


def test_cumulative_epsilon_matches_dp_accounting_default_orders(tmp_path):
    ledger = open_ledger(tmp_path)
    record_fl_rounds(ledger)

    theirs = fl_dp_accounting_epsilon(RDPAccountant.DEFAULT_ALPHAS)

    # Measured: Opacus 4.203053, dp_accounting 4.203617 (1.3e-4 relative). The optimum is the
    # fractional order 4.4, where dp_accounting's series is slightly high at q >= 0.05; mpmath
    # quadrature gives per-step RDP 0.02360147 = Opacus, dp_accounting 0.02361028 (notes §5).
    assert ledger.epsilon() == pytest.approx(theirs, rel=2e-4)
    assert ledger.epsilon() == pytest.approx(4.203, abs=1e-3)


def test_prv_ledger_composes_the_same_history(tmp_path):
    ledger = open_ledger(tmp_path, accountant="prv")

    record_fl_rounds(ledger)

    assert ledger.epsilon() == pytest.approx(3.638, abs=2e-3)  # reference notes §6


def test_prv_falls_back_to_rdp_when_it_fails():
    history = [(0.1, 1.0, 20)]  # PRV returns inf here (measured): its discretisation breaks down

    prv = compute_epsilon(history=history, delta=DELTA, accountant="prv")

    assert prv == compute_epsilon(history=history, delta=DELTA, accountant="rdp")
    assert prv < float("inf")


def test_multi_task_round_composes_every_segment(tmp_path):
    ledger = open_ledger(tmp_path)
    per_task = [(1.0, 1 / 16, 16), (1.2, 1 / 32, 32)]  # e.g. promoter and splice, one accountant each

    entries = [ledger.record_round(run_id="r", round=r, segments=per_task) for r in (1, 2)]

    single = RDPAccountant()
    single.history = per_task * 2
    assert ledger.epsilon() == pytest.approx(single.get_epsilon(delta=DELTA), rel=1e-12)
    assert [entry.steps for entry in entries] == [48, 48]
    assert PrivacyLedger.load(tmp_path).rounds[1].segments == tuple(per_task)


@pytest.mark.parametrize("round_form, message", [
    ({"segments": [(1.0, 0.01, 10)], "steps": 10}, "not both"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.01}, "or segments"),
    ({"segments": []}, "at least one"),
    ({"segments": [(1.0, 0.01)]}, "a segment is"),
])
def test_a_round_is_one_triple_or_a_list_of_segments(tmp_path, round_form, message):
    ledger = open_ledger(tmp_path)

    with pytest.raises(ValueError, match=message):
        ledger.record_round(run_id="r", round=1, **round_form)


# ---------------------------------------------------------------- persistence and identity


def test_reopened_ledger_continues_epsilon(tmp_path):
    record_fl_rounds(open_ledger(tmp_path), rounds=(1, 2))

    reopened = open_ledger(tmp_path)
    before = reopened.epsilon()
    after = record_fl_rounds(reopened, rounds=(4, 5))

    assert before == pytest.approx(FL_EPSILONS[1], abs=1e-3)
    assert after == pytest.approx(FL_EPSILONS[2:], abs=1e-3)
    assert [entry.round for entry in PrivacyLedger.load(tmp_path).rounds] == list(FL_ROUNDS)


@pytest.mark.parametrize("changed", [{"institution": "lab-b"}, {"delta": 1e-6}, {"accountant": "prv"}])
def test_open_refuses_another_institution_delta_or_accountant(tmp_path, changed):
    record_fl_rounds(open_ledger(tmp_path), rounds=(1,))
    name = next(iter(changed))

    with pytest.raises(LedgerError, match=rf"{LEDGER_FILENAME}: .*kept with {name}="):
        open_ledger(tmp_path, **changed)


def test_budget_change_is_allowed_and_recorded(tmp_path):
    open_ledger(tmp_path, budget=8.0)

    open_ledger(tmp_path, budget=5.0)

    changes = PrivacyLedger.load(tmp_path).budget_changes
    assert [(change.old, change.new) for change in changes] == [(8.0, 5.0)]
    assert PrivacyLedger.load(tmp_path).budget_epsilon == 5.0


@pytest.mark.parametrize("bad", [
    {"noise_multiplier": 0.0}, {"noise_multiplier": float("nan")}, {"sample_rate": 0.0},
    {"sample_rate": 1.5}, {"steps": 0}, {"steps": 2.5}, {"round": -1},
])
def test_record_round_rejects_bad_arguments(tmp_path, bad):
    ledger = open_ledger(tmp_path)
    arguments = {"run_id": "r", "round": 1, "noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 10} | bad

    with pytest.raises(ValueError, match=next(iter(bad))):
        ledger.record_round(**arguments)


@pytest.mark.parametrize("bad", [{"budget": 0.0}, {"delta": 1.0}, {"accountant": "gdp"}, {"institution": ""}])
def test_open_rejects_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        open_ledger(tmp_path, **bad)


# ---------------------------------------------------------------- the budget gate


def test_round_past_the_budget_is_refused_and_nothing_is_written(tmp_path):
    ledger = open_ledger(tmp_path, budget=3.0)
    record_fl_rounds(ledger, rounds=(1,))
    stored = (tmp_path / LEDGER_FILENAME).read_bytes()
    planned = {"noise_multiplier": FL_SIGMA, "sample_rate": FL_Q, "steps": FL_STEPS}

    check = ledger.check_budget(**planned)
    with pytest.raises(BudgetExhausted, match="budget exhausted") as refused:
        ledger.record_round(run_id="run-1", round=2, **planned)

    assert not check.allowed
    assert (check.current, check.projected, check.budget) == pytest.approx((*FL_EPSILONS[:2], 3.0), abs=1e-3)
    assert refused.value.check == check
    assert (tmp_path / LEDGER_FILENAME).read_bytes() == stored


round_attempts = st.lists(
    st.tuples(st.floats(0.3, 5.0), st.floats(0.001, 0.3), st.integers(1, 300), st.booleans()),
    min_size=1, max_size=6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=st.floats(0.5, 10.0), attempts=round_attempts)
def test_recorded_epsilon_never_passes_the_budget(budget, attempts):
    with tempfile.TemporaryDirectory() as state_dir:
        ledger = open_ledger(state_dir, budget=budget)

        for number, (sigma, q, steps, through_gate) in enumerate(attempts):
            planned = {"noise_multiplier": sigma, "sample_rate": q, "steps": steps}
            if through_gate and not ledger.check_budget(**planned).allowed:
                continue
            with contextlib.suppress(BudgetExhausted):  # record_round refuses on its own too
                ledger.record_round(run_id="prop", round=number, **planned)

        stored = PrivacyLedger.load(state_dir)
        assert stored.epsilon() <= budget
        assert all(entry.epsilon <= budget for entry in stored.rounds)


# ---------------------------------------------------------------- planning σ


def test_plan_noise_multiplier_spends_the_budget_on_a_fresh_ledger():
    sigma = plan_noise_multiplier(budget_epsilon=8.0, delta=DELTA, sample_rate=0.01, steps=1000)

    epsilon = compute_epsilon(history=[(sigma, 0.01, 1000)], delta=DELTA, accountant="rdp")
    assert 0.9 * 8.0 <= epsilon <= 8.0
    assert sigma == pytest.approx(0.6158, abs=0.01)  # reference notes §5, get_noise_multiplier


def test_plan_noise_multiplier_counts_the_existing_history(tmp_path):
    ledger = open_ledger(tmp_path, budget=6.0)
    record_fl_rounds(ledger)

    sigma = ledger.plan_noise_multiplier(sample_rate=FL_Q, steps=64)

    total = ledger.projected_epsilon(noise_multiplier=sigma, sample_rate=FL_Q, steps=64)
    assert 0.9 * 6.0 <= total <= 6.0
    fresh_sigma = plan_noise_multiplier(budget_epsilon=6.0, delta=DELTA, sample_rate=FL_Q, steps=64)
    assert sigma > fresh_sigma  # less budget is left, so more noise is needed


def test_plan_noise_multiplier_covers_all_planned_multi_task_rounds(tmp_path):
    ledger = open_ledger(tmp_path, budget=8.0)
    record_fl_rounds(ledger, rounds=(1,))
    shape = [(1 / 16, 16), (1 / 32, 32)]

    sigma = ledger.plan_noise_multiplier(round_shape=shape, rounds=3)

    planned = [(sigma, q, steps) for q, steps in shape] * 3
    assert 0.9 * 8.0 <= ledger.projected_epsilon(segments=planned) <= 8.0


def test_plan_noise_multiplier_refuses_an_exhausted_budget():
    spent = [(FL_SIGMA, FL_Q, 64)]  # ε 4.203

    with pytest.raises(BudgetExhausted) as refused:
        plan_noise_multiplier(budget_epsilon=4.0, delta=DELTA, sample_rate=FL_Q, steps=16, already=spent)

    assert refused.value.check.current == pytest.approx(4.203, abs=1e-3)


# ---------------------------------------------------------------- crash safety


class WriterServer:
    """Drives tests/ledger_writer_child.py: spawns ledger writers and reports their output."""

    def __init__(self, stderr_path: Path):
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("w")
        self.process = subprocess.Popen([sys.executable, str(HELPER)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.events: queue.Queue[list[str]] = queue.Queue()
        self.running: set[int] = set()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            self.events.put(line.split())

    def spawn(self, state_dir: Path, crash_point: str = "") -> int:
        self.process.stdin.write(f"spawn {state_dir} {crash_point}\n")
        self.process.stdin.flush()
        pid = int(self.next_event("spawned")[1])
        self.running.add(pid)
        return pid

    def wait_exit(self, pid: int) -> tuple[int, list[int]]:
        """The writer's exit status and the round counts it reported committed."""
        seen: list[list[str]] = []
        status = int(self.next_event("exited", seen)[2])
        self.running.discard(pid)
        return status, [int(event[2]) for event in seen if event[0] == "committed" and int(event[1]) == pid]

    def next_event(self, kind: str, seen: list | None = None) -> list[str]:
        while True:
            event = self.events.get(timeout=60)
            if event[0] == kind:
                return event
            if seen is not None:
                seen.append(event)

    def close(self):
        for pid in self.running:  # only after a failed test: never leave a writer running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._stderr.close()


@pytest.fixture(scope="module")
def writer_server(tmp_path_factory):
    server = WriterServer(tmp_path_factory.mktemp("writers") / "stderr.txt")
    yield server
    server.close()


def assert_killed(server: WriterServer, status: int) -> None:
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, server.stderr_path.read_text()


def open_crash_ledger(state_dir: Path) -> PrivacyLedger:
    return PrivacyLedger.open(state_dir, institution="crash-test", budget_epsilon=1e6, delta=DELTA)


def test_writers_killed_at_random_leave_the_old_or_the_new_ledger(tmp_path, writer_server):
    first = open_crash_ledger(tmp_path)
    rng = random.Random(20261126)
    on_disk = 0

    for _ in range(20):
        pid = writer_server.spawn(tmp_path)
        time.sleep(rng.uniform(0.0, 0.15))  # lands while opening, computing ε, writing, or in between
        os.kill(pid, signal.SIGKILL)
        status, committed = writer_server.wait_exit(pid)

        assert_killed(writer_server, status)
        last_committed = committed[-1] if committed else on_disk
        on_disk = len(PrivacyLedger.load(tmp_path).rounds)  # raises LedgerError if the file is corrupt
        assert on_disk in (last_committed, last_committed + 1)  # old version, or the one in flight

    continued = open_crash_ledger(tmp_path)
    continued.record_round(run_id="after", round=0, noise_multiplier=50.0, sample_rate=0.01, steps=1)
    assert continued.total_steps == on_disk + 1 > first.total_steps
    assert not list(tmp_path.glob("*.tmp"))  # temp files of killed writers are cleaned up


@pytest.mark.parametrize("crash_point, survives", [("file-fsync", "old"), ("rename", "old"),
                                                   ("dir-fsync", "new")])
def test_writer_killed_inside_a_write_leaves_the_old_or_the_new_ledger(tmp_path, writer_server,
                                                                        crash_point, survives):
    record_fl_rounds(open_crash_ledger(tmp_path), rounds=(1, 2))
    before = (tmp_path / LEDGER_FILENAME).read_bytes()

    pid = writer_server.spawn(tmp_path, crash_point)
    status, committed = writer_server.wait_exit(pid)

    assert_killed(writer_server, status)
    assert committed == []
    after = PrivacyLedger.load(tmp_path)  # raises LedgerError if the file is corrupt
    assert len(after.rounds) == {"old": 2, "new": 3}[survives]
    assert ((tmp_path / LEDGER_FILENAME).read_bytes() == before) == (survives == "old")
    assert bool(list(tmp_path.glob("*.tmp"))) == (survives == "old")  # it did die inside the write


def canonical(payload) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def seal(payload, key: bytes) -> str:  # what someone holding the ledger key can do
    return "hmac-sha256:" + hmac.new(key, canonical(payload), hashlib.sha256).hexdigest()


def edit_document(raw: bytes, edit, *, reseal: bool, key: bytes = b"") -> bytes:
    document = json.loads(raw)
    edit(document)
    if reseal:
        document["mac"] = seal(document["payload"], key)
    return json.dumps(document).encode()


def fewer_steps(document):  # the edit that would under-report ε
    document["payload"]["history"][0][2] = 1


DAMAGES = {
    "truncated": (lambda raw, key: raw[: len(raw) // 2], "not valid JSON"),
    "empty": (lambda raw, key: b"", "not valid JSON"),
    "garbled": (lambda raw, key: raw[:40] + b"\xff\x00\x13" + raw[43:], "not UTF-8|not valid JSON"),
    "not a ledger": (lambda raw, key: b"[]", "not a helixfed privacy ledger"),
    "mac": (lambda raw, key: edit_document(raw, fewer_steps, reseal=False), "MAC mismatch"),
    "other key": (lambda raw, key: edit_document(raw, fewer_steps, reseal=True, key=b"k" * 32), "MAC mismatch"),
    "version": (lambda raw, key: edit_document(raw, lambda d: d.update(version=3), reseal=False),
                "version 3 is not supported"),
    "history": (lambda raw, key: edit_document(raw, fewer_steps, reseal=True, key=key), "does not match its 'rounds'"),
    "field type": (lambda raw, key: edit_document(raw, lambda d: d["payload"].update(delta="1e-5"), reseal=True,
                                                  key=key), r"payload\.delta must be"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_ledger_raises_and_is_left_untouched(tmp_path, damage):
    record_fl_rounds(open_ledger(tmp_path), rounds=(1, 2))
    path = tmp_path / LEDGER_FILENAME
    key = bytes.fromhex((tmp_path / KEY_FILENAME).read_text())
    damage_file, reason = DAMAGES[damage]
    path.write_bytes(damage_file(path.read_bytes(), key))
    damaged = path.read_bytes()

    with pytest.raises(LedgerError, match=rf"{LEDGER_FILENAME}: .*({reason})"):
        open_ledger(tmp_path)
    with pytest.raises(LedgerError, match=LEDGER_FILENAME):
        PrivacyLedger.load(tmp_path)

    assert path.read_bytes() == damaged


# ---------------------------------------------------------------- the ledger key


def unkeyed_document(payload) -> bytes:  # a version-1 ledger, as helixfed wrote it before keys
    checksum = "sha256:" + hashlib.sha256(canonical(payload)).hexdigest()
    return json.dumps({"format": "helixfed-privacy-ledger", "version": 1, "checksum": checksum,
                       "payload": payload}).encode()


def test_a_new_ledger_gets_a_private_random_key_and_is_sealed_with_it(tmp_path):
    record_fl_rounds(open_ledger(tmp_path), rounds=(1,))
    other = tmp_path / "other"
    record_fl_rounds(open_ledger(other), rounds=(1,))
    key_path = tmp_path / KEY_FILENAME
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert key_path.read_bytes() != (other / KEY_FILENAME).read_bytes()  # per institution, random
    document = json.loads((tmp_path / LEDGER_FILENAME).read_text())
    assert document["version"] == 2 and "checksum" not in document
    assert document["mac"] == seal(document["payload"], bytes.fromhex(key_path.read_text()))


def test_an_edit_resealed_with_an_unkeyed_checksum_is_refused(tmp_path):
    """The attack of issue 14: lower the steps and recompute a sha256 — as version 1 or beside the MAC."""
    record_fl_rounds(open_ledger(tmp_path), rounds=(1, 2))
    path = tmp_path / LEDGER_FILENAME
    document = json.loads(path.read_text())
    fewer_steps(document)
    for forged, reason in ((unkeyed_document(document["payload"]), "unkeyed .*downgrade"),
                           (edit_document(path.read_bytes(), fewer_steps, reseal=False), "MAC mismatch")):
        path.write_bytes(forged)
        with pytest.raises(LedgerError, match=reason):
            open_ledger(tmp_path)
        with pytest.raises(LedgerError, match=reason):
            PrivacyLedger.load(tmp_path)
        assert path.read_bytes() == forged


def test_a_keyed_ledger_without_its_key_is_refused_and_no_key_is_made(tmp_path):
    record_fl_rounds(open_ledger(tmp_path), rounds=(1,))
    (tmp_path / KEY_FILENAME).unlink()
    ledger_bytes = (tmp_path / LEDGER_FILENAME).read_bytes()
    with pytest.raises(LedgerError, match="key file is missing"):
        open_ledger(tmp_path)
    assert not (tmp_path / KEY_FILENAME).exists()
    assert (tmp_path / LEDGER_FILENAME).read_bytes() == ledger_bytes


def test_a_key_kept_outside_the_state_directory(tmp_path):
    """Kept beside the SuperNode key, whoever can write only the state directory cannot forge the ledger."""
    key_file = tmp_path / "keys" / "ledger.key"
    ledger = PrivacyLedger.open(tmp_path / "state", institution="lab", budget_epsilon=8.0, delta=DELTA,
                                key_file=key_file)
    record_fl_rounds(ledger, rounds=(1,))
    assert key_file.is_file() and not (tmp_path / "state" / KEY_FILENAME).exists()
    assert PrivacyLedger.load(tmp_path / "state", key_file=key_file).epsilon() == pytest.approx(FL_EPSILONS[0], abs=1e-3)
    with pytest.raises(LedgerError, match="key file is missing"):
        PrivacyLedger.load(tmp_path / "state")  # the state directory alone cannot verify it


def test_an_unkeyed_version_1_ledger_is_upgraded_once_keeping_every_step(tmp_path):
    record_fl_rounds(open_ledger(tmp_path), rounds=(1, 2))
    payload = json.loads((tmp_path / LEDGER_FILENAME).read_text())["payload"]
    (tmp_path / LEDGER_FILENAME).write_bytes(unkeyed_document(payload))
    (tmp_path / KEY_FILENAME).unlink()
    assert PrivacyLedger.load(tmp_path).epsilon() == pytest.approx(FL_EPSILONS[1], abs=1e-3)  # read-only: not upgraded
    assert not (tmp_path / KEY_FILENAME).exists()

    ledger = open_ledger(tmp_path)

    assert ledger.epsilon() == pytest.approx(FL_EPSILONS[1], abs=1e-3)
    document = json.loads((tmp_path / LEDGER_FILENAME).read_text())
    assert document["version"] == 2 and document["payload"] == payload
    assert document["mac"] == seal(payload, bytes.fromhex((tmp_path / KEY_FILENAME).read_text()))


@pytest.mark.parametrize("content", [b"", b"zz" * 32, b"00" * 16, b"\xff" * 64])
def test_a_malformed_key_is_refused_and_never_replaced(tmp_path, content):
    record_fl_rounds(open_ledger(tmp_path), rounds=(1,))
    (tmp_path / KEY_FILENAME).write_bytes(content)
    with pytest.raises(LedgerError, match=f"{KEY_FILENAME}: not a privacy ledger key"):
        open_ledger(tmp_path)
    assert (tmp_path / KEY_FILENAME).read_bytes() == content


def test_ledger_replaced_behind_a_running_client_is_refused(tmp_path):
    ledger = open_ledger(tmp_path)
    record_fl_rounds(ledger, rounds=(1,))
    backup = (tmp_path / LEDGER_FILENAME).read_bytes()
    record_fl_rounds(ledger, rounds=(2,))
    (tmp_path / LEDGER_FILENAME).write_bytes(backup)  # a restore from backup would roll ε back

    with pytest.raises(LedgerError, match="no longer holds the 2 rounds"):
        record_fl_rounds(ledger, rounds=(3,))


# ---------------------------------------------------------------- the CLI


def privacy_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="helixfed")
    add_privacy_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["privacy", *argv])


def test_privacy_cli_prints_json(tmp_path, capsys):
    record_fl_rounds(open_ledger(tmp_path, budget=8.0))
    args = privacy_args("--state-dir", str(tmp_path), "--json")

    code = args.func(args)

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["epsilon"] == pytest.approx(4.203, abs=1e-3)
    assert (report["delta"], report["budget"], report["accountant"]) == (DELTA, 8.0, "rdp")
    assert report["remaining"] == pytest.approx(8.0 - report["epsilon"])
    assert report["history"] == [[FL_SIGMA, FL_Q, 64]]
    assert [entry["round"] for entry in report["rounds"]] == list(FL_ROUNDS)


def test_privacy_cli_prints_a_table(tmp_path, capsys):
    record_fl_rounds(open_ledger(tmp_path), rounds=(1,))
    args = privacy_args("--state-dir", str(tmp_path))

    code = args.func(args)

    out = capsys.readouterr().out
    assert code == 0
    assert "ε spent" in out and "2.7636" in out and "rounds trained" in out


def test_privacy_cli_reports_a_missing_ledger(tmp_path, capsys):
    args = privacy_args("--state-dir", str(tmp_path / "nowhere"), "--json")

    code = args.func(args)

    assert code == 1
    assert LEDGER_FILENAME in capsys.readouterr().err
