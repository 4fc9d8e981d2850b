"""The privacy audit: exposure and membership AUC on hand-made losses (exact values), canary
construction, the guards, and `helixfed audit` end to end on a tiny institution."""

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from client.commands.audit import add_audit_parser
from client.privacy.canary_audit import (
    CANARY_BASES,
    AuditError,
    AuditSettings,
    chance_exposure,
    check_separate,
    choose_task,
    exposure_from_losses,
    make_canaries,
    membership_auc,
    plant,
)
from client.privacy.ledger import PrivacyLedger
from common.config import InstitutionConfig
from common.data.dataset import Record
from common.data.writers import write_split_tables
from common.synthetic.generator import generate

# -- exposure and AUC on hand-made losses


def test_a_canary_below_every_candidate_has_the_maximum_exposure():
    rank, exposure = exposure_from_losses(canary_loss=0.1, candidate_losses=[0.5] * 7)
    assert (rank, exposure) == (1, 3.0)  # log2(8) - log2(1)


def test_exposure_ranks_the_canary_among_the_candidates():
    rank, exposure = exposure_from_losses(canary_loss=0.3, candidate_losses=[0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.9])
    assert rank == 3
    assert exposure == pytest.approx(3.0 - math.log2(3.0), abs=1e-12)


def test_ties_take_the_mid_rank_so_a_blind_model_shows_no_exposure():
    rank, exposure = exposure_from_losses(canary_loss=0.3, candidate_losses=[0.1, 0.3, 0.3, 0.9])
    assert rank == 3.0 and exposure == pytest.approx(math.log2(5) - math.log2(3), abs=1e-12)
    rank, exposure = exposure_from_losses(canary_loss=0.7, candidate_losses=[0.7] * 7)  # all equal
    assert rank == 4.5 and exposure == pytest.approx(math.log2(8 / 4.5))


def test_a_canary_above_every_candidate_has_zero_exposure():
    assert exposure_from_losses(canary_loss=2.0, candidate_losses=[0.1, 0.2, 0.3]) == (4, 0.0)


def test_exposure_refuses_no_candidates_and_non_finite_losses():
    with pytest.raises(AuditError, match="at least one candidate"):
        exposure_from_losses(canary_loss=0.1, candidate_losses=[])
    with pytest.raises(AuditError, match="finite"):
        exposure_from_losses(canary_loss=float("nan"), candidate_losses=[0.2])


def test_chance_exposure_is_the_mean_over_uniform_ranks():
    assert chance_exposure(1) == pytest.approx(0.5)  # ranks 1, 2 of N=2: exposures 1, 0
    assert chance_exposure(3) == pytest.approx((2 + 1 + (2 - math.log2(3)) + 0) / 4)
    assert chance_exposure(2**20) == pytest.approx(1 / math.log(2), abs=1e-4)  # log2 e at large N


def test_membership_auc_on_hand_made_losses():
    assert membership_auc(member_losses=[0.1, 0.2], nonmember_losses=[0.3, 0.4]) == 1.0
    assert membership_auc(member_losses=[0.3, 0.4], nonmember_losses=[0.1, 0.2]) == 0.0
    assert membership_auc(member_losses=[0.1, 0.35], nonmember_losses=[0.3, 0.4]) == 0.75


def test_membership_auc_needs_both_groups():
    with pytest.raises(AuditError, match="members and non-members"):
        membership_auc(member_losses=[0.1], nonmember_losses=[])


# -- canaries


def test_plant_overwrites_exactly_the_window():
    assert plant(host="AAAAAAAAAAAAAAAA", secret="CGTACGTACGTA", position=2) == "AACGTACGTACGTAAA"


def test_plant_refuses_a_window_past_the_end():
    with pytest.raises(AuditError, match="does not fit 12 bases into a 16-base sequence"):
        plant(host="A" * 16, secret="C" * 12, position=5)


def _records(n, length=40, seed=0):
    rng = np.random.default_rng(seed)
    return [Record(f"r{i}", "".join(rng.choice(list("ACGT"), size=length)), i % 2, "human") for i in range(n)]


def test_canary_copies_carry_the_secret_at_its_position_in_hosts_of_the_other_class():
    records = _records(40)
    labels = {r.id: r.label for r in records}
    canaries = make_canaries(records=records, count=4, repeats=5, num_classes=2, rng=np.random.default_rng(1),
                             prefix="canary-")
    assert [c.label for c in canaries] == [0, 1, 0, 1]
    for canary in canaries:
        assert len(canary.secret) == CANARY_BASES and len(set(canary.host_ids)) == 5
        assert all(labels[h] != canary.label for h in canary.host_ids)
        for host, copy in zip(canary.hosts, canary.copies(), strict=True):
            window = slice(canary.position, canary.position + CANARY_BASES)
            assert copy[window] == canary.secret and copy[:canary.position] == host[:canary.position]
    assert len({c.secret for c in canaries}) == 4


def test_canaries_need_enough_hosts_of_another_class():
    with pytest.raises(AuditError, match="5 training records of a class other than 0 cannot host 6 copies"):
        make_canaries(records=_records(10), count=1, repeats=6, num_classes=2, rng=np.random.default_rng(0),
                      prefix="c-")


def test_settings_refuse_non_positive_sizes():
    with pytest.raises(AuditError, match="repeats: expected a positive integer, got 0"):
        AuditSettings(repeats=0)
    with pytest.raises(AuditError, match="epochs: expected a positive number"):
        AuditSettings(epochs=0)
    with pytest.raises(AuditError, match="epsilons: expected positive budgets"):
        AuditSettings(epsilons=(8.0, -1.0))


def test_the_audited_task_must_be_held_and_labelled_per_sequence():
    config = InstitutionConfig(name="lab", species="human", tasks=("splice", "coding"))
    assert choose_task(config, None) == "coding"
    with pytest.raises(AuditError, match="per-position"):
        choose_task(config, "splice")
    with pytest.raises(AuditError, match="holds no 'promoter' data"):
        choose_task(config, "promoter")
    with pytest.raises(AuditError, match="holds no sequence task"):
        choose_task(InstitutionConfig(name="lab", species="human", tasks=("splice",)), None)


def test_an_output_inside_the_institutions_data_is_refused(tmp_path):
    with pytest.raises(AuditError, match="overlaps the institution's data directory"):
        check_separate(scratch=tmp_path / "data" / "audit", real=tmp_path / "data", what="data directory")
    check_separate(scratch=tmp_path / "audit" / "data", real=tmp_path / "data", what="data directory")


# -- end to end on a tiny institution

INSTITUTION = """\
name: audit-lab
species: human
tasks: [promoter]
data_dir: data
state_dir: state
device: cpu
privacy: {epsilon: 8.0, delta: 1.0e-4, max_grad_norm: 1.0, planned_rounds: 4}
training: {batch_size: 16, learning_rate: 0.003}
"""
ARGS = ["--canaries", "6", "--repeats", "6", "--epochs", "30", "--candidates", "63", "--seed", "0"]


def _digests(root):
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-institution")
    records = generate(task="promoter", species="human", n=150, seed=5, length=170, difficulty=0.25).records
    write_split_tables(root / "data" / "promoter", {"train": records[:120], "val": records[120:135],
                                                   "test": records[135:]})
    (root / "institution.yaml").write_text(INSTITUTION)
    ledger = PrivacyLedger.open(root / "state", institution="audit-lab", budget_epsilon=8.0, delta=1e-4)
    ledger.record_round(run_id="earlier", round=1, noise_multiplier=1.0, sample_rate=0.1, steps=20)
    before = {"data": _digests(root / "data"), "state": _digests(root / "state")}
    parser = argparse.ArgumentParser()
    add_audit_parser(parser.add_subparsers())
    args = parser.parse_args(["audit", "--institution", str(root / "institution.yaml"), *ARGS,
                              "--out", str(root / "audit"), "--json"])
    return root, before, args.func(args)


def test_audit_command_writes_the_report_with_every_field(audited):
    root, _, code = audited
    assert code == 0
    report = json.loads((root / "audit" / "audit.json").read_text())
    assert report["task"] == "promoter" and report["records"] == {"train": 120, "canary_copies": 36, "held_out": 30}
    assert report["max_exposure"] == 6.0 and report["chance_exposure"] == pytest.approx(chance_exposure(63))
    assert [run["mode"] for run in report["runs"]] == ["untrained", "no-dp", "dp"]
    for run in report["runs"]:
        for group in ("planted", "never_seen"):
            assert len(run[group]["exposures"]) == 6
            assert 0 <= run[group]["exposure_mean"] <= run[group]["exposure_max"] <= 6.0
            assert 0 <= run[group]["ranked_first"] <= 1
        assert 0 <= run["mia_auc"] <= 1 and 0 <= run["canary_auc"] <= 1 and 0 <= run["exposure_p_value"] <= 1
    dp = report["runs"][2]
    assert dp["epsilon_budget"] == 8.0 and 7.0 < dp["epsilon"] <= 8.0 and dp["noise_multiplier"] > 0


def test_audit_never_touches_the_institutions_data_or_ledger(audited):
    root, before, _ = audited
    assert _digests(root / "data") == before["data"]
    assert _digests(root / "state") == before["state"]
    assert len(PrivacyLedger.load(root / "state").rounds) == 1
    dp = json.loads((root / "audit" / "audit.json").read_text())["runs"][2]
    assert (root / "audit" / "state") in Path(dp["ledger"]).parents


def test_without_dp_the_tiny_model_memorises_its_canaries(audited):
    # Deterministic: the non-DP run depends only on the seed (DP noise is not tested here).
    root, _, _ = audited
    untrained, no_dp, _ = json.loads((root / "audit" / "audit.json").read_text())["runs"]
    assert no_dp["planted"]["exposure_mean"] > no_dp["never_seen"]["exposure_mean"] + 1.5
    assert no_dp["planted"]["exposure_mean"] > untrained["planted"]["exposure_mean"] + 1.5
