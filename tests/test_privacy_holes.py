"""The privacy holes issue 14 found by probing, each closed and kept closed: what a reply may carry,
ledgers never restarted from zero, `--fresh` scope, strict config files, bounded model configs,
refusals that exit non-zero."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from flower_messages import institution_context, server_request
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client import app as client_app
from client.commands.privacy import run_privacy
from client.privacy.ledger import KEY_FILENAME, LEDGER_FILENAME, LedgerError, PrivacyLedger
from common import protocol as p
from common.cli import main as helixfed
from common.config import ConfigError, FederationConfig, load_config, load_institution
from common.data.writers import write_split_tables
from common.model import GenomicTransformer, ModelConfig, ModelConfigError
from common.synthetic.generator import generate
from server.ops.simulate import SIMULATED_MARKER, forget_simulated_state, mark_simulated_state

MODEL = ModelConfig(d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0, max_len=192)
TASKS = ("promoter", "coding")
# Everything a train reply may say, besides the trained weights: the privacy accounting's own numbers
# and the record count per task (disclosed metadata, README "Privacy model").
TRAIN_METRIC_KEYS = {p.NUM_EXAMPLES, p.EPSILON, p.DELTA, p.BUDGET, p.REFUSED, p.NOISE_MULTIPLIER,
                     *(p.task_key(t, p.NUM_EXAMPLES) for t in TASKS)}
META_KEYS = {p.INSTITUTION, p.SPECIES, p.STATUS, p.REASON}


def tree_hash(root: Path) -> dict:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.fixture
def site(tmp_path) -> Path:
    for i, task in enumerate(TASKS):
        records = generate(task=task, species="mouse", n=40, seed=i, length=170).records
        write_split_tables(tmp_path / "data" / task, {"train": records[:24], "val": records[24:32],
                                                      "test": records[32:]})
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "name": "jackson-lab", "species": "mouse", "tasks": list(TASKS), "data_dir": "data", "state_dir": "state",
        "device": "cpu", "privacy": {"epsilon": 4.0, "delta": 1e-3, "noise_multiplier": 1.5},
        "training": {"batch_size": 8, "learning_rate": 0.003}}))
    return path


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    client_app._AGENTS.clear()
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def call(message_type: str, institution: Path, model_config: ModelConfig = MODEL) -> Message:
    request = server_request(message_type, model=MODEL, tasks=TASKS, announced=model_config)
    return client_app.app(request, institution_context(institution))


# ---------------------------------------------------------------- 1. nothing leaves outside the ledger


def test_every_key_of_a_train_reply_is_accounted_for(site):
    reply = call("train", site)

    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {p.ARRAYS, p.METRICS, p.META}
    assert set(reply.content[p.METRICS].keys()) == TRAIN_METRIC_KEYS  # no training loss, nothing else
    assert set(reply.content[p.META].keys()) == META_KEYS | {p.ACCOUNTANT}  # what its epsilon means


def test_evaluation_metrics_leave_only_when_the_institution_opts_in(site):
    declined = call("evaluate", site)
    assert set(declined.content.keys()) == {p.META}
    assert declined.content[p.META][p.STATUS] == p.Status.DECLINED

    config = yaml.safe_load(site.read_text())
    config["privacy"]["share_evaluation"] = True
    site.write_text(yaml.safe_dump(config))
    client_app._AGENTS.clear()
    shared = call("evaluate", site)
    assert shared.content[p.META][p.STATUS] == p.Status.EVALUATED
    assert shared.content[p.METRICS][p.task_key("promoter", p.NUM_EXAMPLES)] == 8
    assert FederationConfig().federation.fraction_evaluate == 0.0  # the server does not even ask by default


# ---------------------------------------------------------------- 2. a lost ledger is not a new start


def trained_ledger(state: Path) -> float:
    ledger = PrivacyLedger.open(state, institution="lab-a", budget_epsilon=8.0, delta=1e-5)
    ledger.record_round(run_id="r", round=1, noise_multiplier=1.0, sample_rate=0.01, steps=1000)
    return ledger.epsilon()


def test_a_deleted_ledger_is_never_restarted_from_zero(tmp_path):
    trained_ledger(tmp_path)
    (tmp_path / LEDGER_FILENAME).unlink()
    before = tree_hash(tmp_path)

    with pytest.raises(LedgerError, match="traces of an earlier one .* refusing to start again from epsilon 0"):
        PrivacyLedger.open(tmp_path, institution="lab-a", budget_epsilon=8.0, delta=1e-5)
    assert tree_hash(tmp_path) == before and not (tmp_path / LEDGER_FILENAME).exists()


def privacy_args(*argv: str):
    import argparse

    from client.commands.privacy import add_privacy_parser
    parser = argparse.ArgumentParser()
    add_privacy_parser(parser.add_subparsers())
    return parser.parse_args(["privacy", *argv])


def test_a_crash_left_temp_file_is_kept_and_can_be_promoted_after_verification(tmp_path, capsys):
    epsilon = trained_ledger(tmp_path)
    temp = tmp_path / f".{LEDGER_FILENAME}.k3x9.tmp"
    (tmp_path / LEDGER_FILENAME).rename(temp)  # killed between writing the temp file and the rename

    with pytest.raises(LedgerError, match=r"--promote .*k3x9\.tmp"):
        PrivacyLedger.open(tmp_path, institution="lab-a", budget_epsilon=8.0, delta=1e-5)
    assert temp.exists()
    args = privacy_args("--state-dir", str(tmp_path), "--json", "--promote", str(temp))
    assert run_privacy(args) == 0
    assert json.loads(capsys.readouterr().out)["epsilon"] == pytest.approx(epsilon)
    assert PrivacyLedger.open(tmp_path, institution="lab-a", budget_epsilon=8.0, delta=1e-5).epsilon() == epsilon


def test_a_tampered_temp_file_is_not_promoted(tmp_path):
    trained_ledger(tmp_path)
    temp = tmp_path / f".{LEDGER_FILENAME}.a1.tmp"
    document = json.loads((tmp_path / LEDGER_FILENAME).read_text())
    document["payload"]["history"] = []
    temp.write_text(json.dumps(document))
    (tmp_path / LEDGER_FILENAME).unlink()

    args = privacy_args("--state-dir", str(tmp_path), "--promote", str(temp))
    assert run_privacy(args) == 1
    assert not (tmp_path / LEDGER_FILENAME).exists()


def test_a_fresh_state_directory_starts_at_zero_and_leaves_a_marker(tmp_path):
    ledger = PrivacyLedger.open(tmp_path / "new", institution="lab-a", budget_epsilon=8.0, delta=1e-5)
    assert ledger.epsilon() == 0.0
    assert (tmp_path / "new" / f"{LEDGER_FILENAME}.created").is_file()


# ---------------------------------------------------------------- 3. --fresh deletes only what it made


def test_fresh_deletes_only_this_simulations_state(tmp_path):
    config = FederationConfig.model_validate({
        "tasks": ["promoter"], "output_dir": str(tmp_path / "run"),
        "institutions": [{"name": "sim-a", "species": "human", "tasks": ["promoter"]}]})
    config = config.resolved(tmp_path)
    other = tmp_path / "run" / "state" / "not-in-this-federation"
    other.mkdir(parents=True)
    (other / LEDGER_FILENAME).write_text("a real ledger")
    mark_simulated_state(config)
    own = config.institution(0).state_dir
    (own / LEDGER_FILENAME).write_text("simulated")

    forget_simulated_state(config, tmp_path / "run")

    assert not own.exists() and (other / LEDGER_FILENAME).read_text() == "a real ledger"


def test_fresh_refuses_a_state_directory_it_did_not_create(tmp_path):
    config = FederationConfig.model_validate({
        "tasks": ["promoter"], "output_dir": str(tmp_path / "run"),
        "institutions": [{"name": "real-lab", "species": "human", "tasks": ["promoter"]}]}
    ).resolved(tmp_path)
    state = config.institution(0).state_dir
    state.mkdir(parents=True)
    (state / LEDGER_FILENAME).write_text("a real ledger")
    mark_simulated_state(config)  # never marks a directory that already holds something
    before = tree_hash(tmp_path)

    with pytest.raises(ConfigError, match=rf"{state}.* not created by `helixfed simulate`"):
        forget_simulated_state(config, tmp_path / "run")
    assert tree_hash(tmp_path) == before and not (state / SIMULATED_MARKER).exists()


# ---------------------------------------------------------------- 4. config files are read strictly


@pytest.mark.parametrize("text, message", [
    ("privacy: {epsilon: 1.0, epsilon: 50.0}\n", r"line 1.*duplicate key 'epsilon'"),
    ("name: a\nspecies: human\nname: b\n", r"line 3.*duplicate key 'name' \(first given on line 1\)"),
    ("a: &x [1, 2]\n" + "".join(f"b{i}: *x\n" for i in range(70)), "more than 64 aliases"),
])
def test_duplicate_keys_and_alias_bombs_are_refused_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "institution.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"institution\.yaml:.*{message}"):
        load_institution(path)


def test_a_binary_config_names_the_file_and_line(tmp_path):
    path = tmp_path / "federation.yaml"
    path.write_bytes(b"name: demo\nseed: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"federation\.yaml: line 2: not UTF-8 text \(byte 0xff\)"):
        load_config(path, FederationConfig)


# ---------------------------------------------------------------- 6. bounded model configs


@pytest.mark.parametrize("field, value", [("max_len", 2_000_000_000), ("d_model", 1 << 20), ("n_layers", 10_000),
                                          ("motif_kernel", 1001)])
def test_model_sizes_are_bounded(field, value):
    with pytest.raises(ModelConfigError, match=rf"model\.{field}: {value} is above the limit"):
        ModelConfig.from_dict({**MODEL.to_dict(), field: value})


def test_an_agent_refuses_a_model_past_its_own_limit_before_building_it(site):
    huge = ModelConfig(d_model=1024, n_heads=8, n_layers=48, d_ff=4096, max_len=192)
    reply = call("train", site, model_config=huge)
    assert set(reply.content.keys()) == {p.META} and reply.content[p.META][p.STATUS] == p.Status.FAILED
    assert reply.content[p.META][p.REASON] == "ValueError at the institution (details in its own log)"
    assert PrivacyLedger.load(site.parent / "state").rounds == ()  # nothing trained, nothing spent


@pytest.mark.parametrize("weights", [[0.5, 5.0], [-4.0, 1.0], [1.0, 1.0, 1.0]])
def test_an_agent_refuses_server_training_settings_that_widen_a_record_past_c(site, weights):
    """weights_after_clipping scale each record's clipped gradient: above 1 (or below -1) a record would
    weigh more than the noise covers. The server's training section applies where the site has none."""
    settings = yaml.safe_load(site.read_text())
    del settings["training"]
    site.write_text(yaml.safe_dump(settings))
    request = server_request("train", model=MODEL, tasks=TASKS)
    request.content[p.CONFIG][p.TRAINING] = json.dumps({"batch_size": 8, "weights_after_clipping": {"promoter": weights}})
    reply = client_app.app(request, institution_context(site))
    assert set(reply.content.keys()) == {p.META} and reply.content[p.META][p.STATUS] == p.Status.FAILED
    state = site.parent / "state"  # refused before the agent opened a ledger, or with nothing spent in it
    assert not (state / LEDGER_FILENAME).exists() or PrivacyLedger.load(state).rounds == ()


# ---------------------------------------------------------------- 8. refusals exit non-zero


def test_train_with_no_budget_left_exits_3_and_writes_no_model(site, tmp_path):
    config = yaml.safe_load(site.read_text())
    config["privacy"] = {"epsilon": 0.01, "delta": 1e-3, "noise_multiplier": 0.5}
    site.write_text(yaml.safe_dump(config))

    assert helixfed(["train", "--institution", str(site), "--out", str(tmp_path / "out"), "--epochs", "1"]) == 3
    assert not (tmp_path / "out" / "final").exists()
    assert PrivacyLedger.load(site.parent / "state").rounds == ()  # nothing was spent


# ---------------------------------------------------------------- 7. a ledger rolled back is caught


def test_the_server_rejects_an_institution_whose_epsilon_went_down():
    from common.config import AggregationSection
    from server.strategy import SpeciesFedAvg

    model = GenomicTransformer(MODEL, tasks=("promoter",))
    strategy = SpeciesFedAvg(aggregation=AggregationSection(), min_train_institutions=1)
    strategy.set_global(ArrayRecord(model.state_dict()))

    def reply(name: str, epsilon: float) -> Message:
        ask = Message(content=RecordDict({p.CONFIG: ConfigRecord({p.SERVER_ROUND: 1})}), dst_node_id=7,
                      message_type="train")
        metrics = {p.NUM_EXAMPLES: 10, p.EPSILON: epsilon, p.DELTA: 1e-5, p.BUDGET: 8.0, p.REFUSED: 0.0,
                   p.task_key("promoter", p.NUM_EXAMPLES): 10}
        return Message(RecordDict({p.ARRAYS: ArrayRecord(model.state_dict()), p.METRICS: MetricRecord(metrics),
                                   p.META: ConfigRecord({p.INSTITUTION: name, p.SPECIES: "human",
                                                         p.STATUS: "trained", p.REASON: ""})}), reply_to=ask)

    strategy.aggregate_train(1, [reply("lab-a", 2.0), reply("lab-b", 3.0)])
    strategy.aggregate_train(2, [reply("lab-a", 1.5), reply("lab-b", 3.5)])

    strategy.aggregate_train(3, [reply("lab-a", 2.5), reply("lab-b", 3.5)])  # restored to round 2's ledger

    reports = {r.institution: r for r in strategy.rounds[2].train}
    assert reports["lab-a"].status == p.Status.REJECTED
    assert "1.500000 is below the 2.000000 it reported in round 1" in reports["lab-a"].reason
    third = {r.institution: r for r in strategy.rounds[3].train}
    assert third["lab-b"].status == p.Status.REJECTED
    assert "3.500000 after training is not above the 3.500000" in third["lab-b"].reason
    assert third["lab-a"].status == p.Status.TRAINED
    assert reports["lab-b"].status == p.Status.TRAINED
    averaged = {name for weights in strategy.rounds[2].aggregation.values() for name in weights}
    assert averaged == {"lab-b"}  # the rolled-back institution's update is never averaged


def test_an_agent_seals_its_ledger_with_the_key_its_config_names(site):
    """`privacy.ledger_key` resolves against the institution file; the key never lands in the state dir,
    so whoever can edit the state directory alone cannot reseal an edited history."""
    config = yaml.safe_load(site.read_text())
    config["privacy"]["ledger_key"] = "keys/ledger.key"
    site.write_text(yaml.safe_dump(config))

    reply = call("train", site)

    assert reply.content[p.META][p.STATUS] == p.Status.TRAINED
    key_file = site.parent / "keys" / "ledger.key"
    state = site.parent / "state"
    assert key_file.stat().st_mode & 0o777 == 0o600 and not (state / KEY_FILENAME).exists()
    epsilon = PrivacyLedger.load(state, key_file=key_file).epsilon()
    assert epsilon == pytest.approx(reply.content[p.METRICS][p.EPSILON])
    with pytest.raises(LedgerError, match="key file is missing"):
        PrivacyLedger.load(state)


# ---------------------------------------------------------------- hostile checkpoints


def _reseal(path: Path) -> None:  # a matching checksum: what a damaged but consistent directory looks like
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    (path / "checkpoint.json").write_text(json.dumps(meta))


def _rewrite_weights(path: Path, weights) -> None:
    from safetensors.torch import save_file
    save_file(weights, str(path / "model.safetensors"))
    _reseal(path)


def _pickle_as_weights(path: Path) -> None:  # a pickle renamed model.safetensors is never unpickled
    torch.save({"w": torch.zeros(2)}, path / "model.safetensors")
    _reseal(path)


def _as_version_1(path: Path) -> None:  # what helixfed wrote before safetensors
    torch.save(GenomicTransformer(MODEL, tasks=("promoter",)).state_dict(), path / "weights.pt")
    (path / "model.safetensors").unlink()


def _edit_json(path: Path, name: str, **changes) -> None:
    meta = json.loads((path / name).read_text())
    meta.update(changes)
    (path / name).write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "checkpoint.json").write_bytes(b"\xff\xfe{binary"), "unreadable checkpoint metadata"),
    (lambda d: (d / "config.json").write_bytes(b"[1, 2]"), "unreadable model config: expected a JSON object"),
    (lambda d: _edit_json(d, "config.json", tasks=["martian_task"]), r"tasks \['martian_task'\] are neither built in"),
    (lambda d: _edit_json(d, "config.json", tasks="promoter"), "'tasks' must be a non-empty list"),
    (lambda d: _edit_json(d, "config.json", model_type="bert"), "model_type 'bert' is not"),
    (lambda d: _edit_json(d, "checkpoint.json", round="abc"), "'round' must be an integer >= 0, got 'abc'"),
    (lambda d: _edit_json(d, "checkpoint.json", state=[1, 2]), "'state' must be an object"),
    (lambda d: _edit_json(d, "checkpoint.json", version=1), "not a helixfed-checkpoint version 2 file"),
    (lambda d: _edit_json(d, "config.json", model={**MODEL.to_dict(), "max_len": 2_000_000_000}), "above the limit"),
    (_pickle_as_weights, "cannot load weights"),
    (_as_version_1, "older helixfed .*weights.pt, a pickle"),
    (lambda d: (d / "config.json").unlink(), "not a helixfed checkpoint"),
    (lambda d: _rewrite_weights(d, {k: v.fill_(float("nan")) if "heads" in k else v
                                    for k, v in GenomicTransformer(MODEL, tasks=("promoter",)).state_dict().items()}),
     "non-finite values in heads"),
])
def test_a_damaged_checkpoint_is_a_clear_error_and_is_left_as_it_is(tmp_path, damage, message):
    from common.checkpoint import CheckpointError, load_model, save_checkpoint

    model = GenomicTransformer(MODEL, tasks=("promoter",))
    path = save_checkpoint(tmp_path / "ckpt", weights=model.state_dict(), model_config=MODEL, tasks=model.tasks,
                           round=2)
    damage(path)
    before = tree_hash(tmp_path)

    with pytest.raises(CheckpointError, match=message):
        load_model(path)
    assert tree_hash(tmp_path) == before


def test_evaluate_names_the_file_and_line_of_a_sequence_longer_than_the_model_takes(tmp_path, capsys):
    from common.checkpoint import save_checkpoint

    small = ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=20)
    path = save_checkpoint(tmp_path / "ckpt", weights=GenomicTransformer(small, tasks=("promoter",)).state_dict(),
                           model_config=small, tasks=("promoter",), round=1)
    (tmp_path / "long.fa").write_text(">ok|1\nACGTACGT\n>long|0\n" + "ACGT" * 10 + "\n")

    assert helixfed(["evaluate", "--checkpoint", str(path), "--data", str(tmp_path / "long.fa"),
                     "--task", "promoter"]) == 1
    expected = "long.fa, line 3 (record 'long|0'): sequence of 40 bases exceeds max_len 20"
    err = capsys.readouterr().err  # rich wraps at the terminal's width: at a space, or inside a long path
    assert "".join(expected.split()) in "".join(err.split())


def test_a_second_agent_on_a_taken_port_says_which_port_and_what_to_do(site, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = helixfed(["client", "--institution", str(site), "--server", "127.0.0.1:1", "--insecure",
                         "--port", str(port)])
    assert code == 1
    captured = capsys.readouterr()
    out = (captured.out + captured.err).replace("\n", " ")
    assert f"local port {port}" in out and "pass --port with a free port" in out


def test_simulate_names_every_missing_input_before_starting_anything(tmp_path):
    from server.ops.simulate import simulate

    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump({
        "tasks": ["promoter", "enhancer"], "output_dir": str(tmp_path / "run"), "data_dir": str(tmp_path / "data"),
        "institutions": [
            {"name": "lab-a", "species": "human", "tasks": ["promoter", "enhancer"]},
            {"name": "lab-b", "species": "mouse", "tasks": ["enhancer"],
             "data": {"enhancer": {"positives": ["peaks.fa"], "negatives": ["bg.fa"]}}}]}))
    (tmp_path / "data" / "lab-a" / "promoter").mkdir(parents=True)
    (tmp_path / "peaks.fa").write_text(">a\nACGT\n")

    with pytest.raises(ConfigError) as missing:
        simulate(path, rounds=1, timeout=60)
    lines = str(missing.value).splitlines()[1:]
    assert [line.strip() for line in lines] == [
        f"lab-a: no data for task 'enhancer': {tmp_path / 'data' / 'lab-a' / 'enhancer'} does not exist",
        f"lab-b: data.enhancer: {tmp_path / 'bg.fa'} does not exist"]
    assert not (tmp_path / "run" / ".flwr").exists()  # no SuperLink was started


def test_a_model_is_dp_only_if_its_training_and_its_start_were(site, tmp_path):
    from common.checkpoint import checkpoint_privacy, load_checkpoint
    from common.protocol import InstitutionRound, RoundMetrics
    from server.checkpoints import trained_privacy

    config = yaml.safe_load(site.read_text())
    config["privacy"] = {"enabled": False}  # DP off in the file, not by --no-dp
    site.write_text(yaml.safe_dump(config))
    assert helixfed(["train", "--institution", str(site), "--out", str(tmp_path / "plain"), "--epochs", "1"]) == 0
    assert checkpoint_privacy(load_checkpoint(tmp_path / "plain" / "final")) == "non-dp"

    history = [RoundMetrics(1, {}, institutions={"a": InstitutionRound("human", p.Status.TRAINED, budget=8.0)})]
    assert trained_privacy(history)["dp"] is True
    assert trained_privacy(history, start="public")["dp"] is True
    assert trained_privacy(history, start="non-dp")["dp"] is False  # DP fine-tuning of a non-DP start
    assert trained_privacy(history, start="unknown")["dp"] is False


def test_state_directories_and_checkpoints_are_private_whatever_the_umask(tmp_path):
    from common.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        PrivacyLedger.open(tmp_path / "state", institution="lab-a", budget_epsilon=8.0, delta=1e-5)
        model = GenomicTransformer(MODEL, tasks=("promoter",))
        path = save_checkpoint(tmp_path / "ckpt", weights=model.state_dict(), model_config=MODEL, tasks=model.tasks,
                               round=1)
    finally:
        os.umask(old)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / LEDGER_FILENAME).stat().st_mode & 0o777 == 0o600
    assert path.stat().st_mode & 0o777 == 0o700
    assert {f.stat().st_mode & 0o777 for f in path.iterdir()} == {0o600}
