"""Secure aggregation (aggregation.secure): Flower's SecAgg+ between the real ClientApp and the real
server driver, over a grid that delivers messages in this process (server/ops/local_grid.py) so every
reply can be inspected and an institution can die at any stage of the protocol.

Training is replaced by prepared updates here (the property under test is what the server can see and
compute); the simulation test in test_simulation.py trains for real through Flower's engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from client import app as client_app
from client.agent import InstitutionAgent, TrainOutcome
from common import protocol as p
from common.config import AggregationSection, SecureAggregationSection, TrainingConfig
from common.data.writers import write_split_tables
from common.finetuning import group_of, trainable_names
from common.model import GenomicTransformer, ModelConfig
from common.protocol import Status
from common.synthetic.generator import generate
from server.aggregation import SecureRoundIncomplete, Update, aggregate
from server.ops.local_grid import LocalGrid
from server.secure_aggregation import run_secure_round, secure_layout
from server.strategy import SpeciesFedAvg

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=192, kmer_linear=2)
TASKS = ("promoter", "coding", "enhancer")
# name, species, tasks: two institutions share a species; heads are trained by different subsets
# (enhancer by nobody: it keeps its value)
SITES = [("oslo-uh", "human", ["promoter", "coding"]), ("st-olavs", "human", ["promoter"]),
         ("jackson-lab", "mouse", ["promoter", "coding"]), ("yeast-centre", "yeast", ["coding"])]
NODES = {name: 100 + i for i, (name, _, _) in enumerate(SITES)}
SETTINGS = SecureAggregationSection(reconstruction_threshold=0.67, clipping_range=1.0)
STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


@pytest.fixture(scope="module")
def institutions(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    files = {}
    for i, (name, species, tasks) in enumerate(SITES):
        for j, task in enumerate(tasks):
            records = generate(task=task, species=species, n=20 + 10 * i + 5 * j, seed=10 * i + j, length=170 if task == "promoter" else 120).records
            write_split_tables(root / name / "data" / task, {"train": records[:-4], "val": records[-4:-2],
                                                            "test": records[-2:]})
        files[name] = root / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump({
            "name": name, "species": species, "tasks": tasks, "data_dir": f"{name}/data", "state_dir": f"{name}/state",
            "device": "cpu", "privacy": {"epsilon": 50.0, "delta": 1e-3, "noise_multiplier": 1.0}}))
    return files


def prepared_update(name: str, model: GenomicTransformer, tasks) -> dict[str, torch.Tensor]:
    """What this institution's training would send: its trained tensors, moved by a known amount."""
    generator = torch.Generator().manual_seed(sum(map(ord, name)))
    names = trainable_names(model, mode="all", tasks=tasks)
    return {k: (v + 0.05 * torch.randn(v.shape, generator=generator)).contiguous()
            for k, v in model.state_dict().items() if k in names}


@pytest.fixture
def prepared_training(monkeypatch):
    """InstitutionAgent.train returns the prepared update, charging the ledger a fixed round."""
    def train(self, model, *, run_id, server_round, num_rounds=None, attempt=1):
        examples = {t: len(d) for t, d in self.data("train").items()}
        self.ledger.record_round(run_id=run_id, round=server_round, noise_multiplier=5.0, sample_rate=0.01, steps=1)
        return TrainOutcome(Status.TRAINED, self.ledger.epsilon(), 1e-3, 50.0, examples=examples,
                            weights=prepared_update(self.config.name, model, examples))

    monkeypatch.setattr(InstitutionAgent, "train", train)
    client_app._AGENTS.clear()
    yield
    client_app._AGENTS.clear()


def local_grid(files, dies_at: dict[str, str] | None = None) -> LocalGrid:
    """The real ClientApp behind a local grid; an institution in ``dies_at`` answers nothing from that
    SecAgg+ stage on (as a killed one: no reply)."""
    dead_from = {NODES[n]: STAGES.index(stage) for n, stage in (dies_at or {}).items()}

    def stage(msg: Message) -> int:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        return STAGES.index(configs[Key.STAGE]) if configs else -1  # -1: the describe query

    return LocalGrid(client_app.app, {NODES[n]: {"institution": str(f)} for n, f in files.items()},
                     answers=lambda node, msg: node not in dead_from or stage(msg) < dead_from[node])


def secure_round(grid, *, settings=SETTINGS, clip=None, mode="species_balanced"):
    torch.manual_seed(0)
    model = GenomicTransformer(MODEL, tasks=TASKS)
    arrays = ArrayRecord(model.state_dict())
    strategy = SpeciesFedAvg(aggregation=AggregationSection(mode=mode), min_train_institutions=2,
                             min_available_nodes=len(grid.contexts))
    strategy.set_global(arrays)
    config = ConfigRecord({p.MODEL_CONFIG: json.dumps(MODEL.to_dict()), p.TASKS: json.dumps(list(TASKS)),
                           p.TRAINING: TrainingConfig().model_dump_json(), p.NUM_ROUNDS: 1})
    layout = secure_layout(trainable_names(model, mode="all", tasks=TASKS), strategy.global_weights)
    result = run_secure_round(grid, strategy, server_round=1, arrays=arrays, train_config=config, settings=settings,
                              timeout=30, layout=layout, clip=clip)
    new = strategy.aggregate_secure(1, result)
    return model, strategy, {k: v.numpy() for k, v in new.to_torch_state_dict().items()}


def expected_aggregate(model, institutions_dir, names, mode="species_balanced"):
    from common.data.readers import load_dataset

    previous = {k: v.numpy() for k, v in model.state_dict().items()}
    updates = []
    for name, species, tasks in SITES:
        if name not in names:
            continue
        examples = {t: len(load_dataset(institutions_dir / name / "data" / t, task=t, split="train")) for t in tasks}
        weights = {k: v.numpy() for k, v in prepared_update(name, model, tasks).items()}
        updates.append(Update(name, species, weights, examples))
    return aggregate(updates, previous, mode=mode)


STEP = 2 * SETTINGS.clipping_range / SETTINGS.quantization_range  # one quantisation level


@pytest.mark.parametrize("mode", ["species_balanced", "examples"])
def test_the_secure_aggregate_equals_the_plaintext_one_and_no_reply_holds_an_update(institutions, prepared_training,
                                                                                    mode):
    grid = local_grid(institutions)
    model, strategy, secure = secure_round(grid, mode=mode)
    expected, report = expected_aggregate(model, next(iter(institutions.values())).parent, set(NODES), mode=mode)
    assert strategy.rounds[1].aggregation.keys() == report.weights.keys()
    for group, weights in report.weights.items():
        assert strategy.rounds[1].aggregation[group] == pytest.approx(weights)
    for name, value in expected.items():
        np.testing.assert_allclose(secure[name], value, atol=8 * STEP, rtol=0, err_msg=name)
    moved = [n for n in expected if not np.array_equal(expected[n], model.state_dict()[n].numpy())]
    assert any(n.startswith("heads.coding.") for n in moved) and not any(n.startswith("heads.enhancer.") for n in moved)
    assert {r.institution: r.status for r in strategy.rounds[1].train} == {n: Status.TRAINED for n in NODES}

    # Every reply the server received: no array record with content, and what the masked vectors hold
    # is not the quantised plaintext (which lies below 2^22 levels): masks spread it over [0, 2^32).
    masked_replies = 0
    for reply in grid.replies:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
        if Key.MASKED_PARAMETERS in configs:
            masked_replies += 1
            entries = np.concatenate([bytes_to_ndarray(b).ravel() for b in configs[Key.MASKED_PARAMETERS]])
            assert entries.size > 1_000 and np.mean(entries >= 2 ** 23) > 0.99
    assert masked_replies == len(NODES)


@pytest.mark.parametrize("stage", STAGES)
def test_an_institution_dying_at_any_stage_does_not_stop_the_round(institutions, prepared_training, stage):
    grid = local_grid(institutions, dies_at={"st-olavs": stage})
    model, strategy, secure = secure_round(grid)
    statuses = {r.institution: r.status for r in strategy.rounds[1].train}
    # past the collect stage its masked vector is in the sum (its own mask is recovered from its shares)
    in_sum = set(NODES) - ({"st-olavs"} if STAGES.index(stage) <= 2 else set())
    assert statuses == {n: Status.TRAINED if n in in_sum else Status.FAILED for n in NODES}
    data = next(iter(institutions.values())).parent
    if stage == Stage.COLLECT_MASKED_VECTORS:
        # it had its weights and died training: the others' weights are renormalised by their sum
        _, planned = expected_aggregate(model, data, set(NODES))
        expected = renormalised(model, planned.weights, in_sum)
    else:  # before training, the weights are shared out among those left, as in a plain round
        expected, _ = expected_aggregate(model, data, in_sum)
    for name, value in expected.items():
        np.testing.assert_allclose(secure[name], value, atol=8 * STEP, rtol=0, err_msg=name)


def renormalised(model, weights, stayed):
    previous = {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}
    updates = {name: prepared_update(name, model, tasks) for name, _, tasks in SITES if name in stayed}
    result = {k: v.copy() for k, v in previous.items()}
    for key in previous:
        group = weights[group_of(key)]
        total = sum(w for i, w in group.items() if i in stayed and key in updates[i])
        if total:
            result[key] = previous[key] + sum(w * (updates[i][key].numpy() - previous[key])
                                              for i, w in group.items() if i in stayed and key in updates[i]) / total
    return result


def test_below_the_reconstruction_threshold_the_round_is_an_error(institutions, prepared_training):
    settings = SETTINGS.model_copy(update={"reconstruction_threshold": 1.0})
    grid = local_grid(institutions, dies_at={"st-olavs": Stage.COLLECT_MASKED_VECTORS})
    with pytest.raises(SecureRoundIncomplete, match="reconstruction threshold"):
        secure_round(grid, settings=settings)


def test_each_institution_bounds_its_own_update_before_masking(institutions, prepared_training):
    grid = local_grid(institutions)
    model, strategy, secure = secure_round(grid, clip=0.01)
    before = {k: v.numpy() for k, v in model.state_dict().items()}
    backbone = [k for k in before if not k.startswith("heads.")]
    moved = np.sqrt(sum(float(np.sum((secure[k] - before[k]) ** 2)) for k in backbone))
    assert 0 < moved <= 0.01 + 1e-3  # a weighted mean of updates each of norm <= 0.01


@pytest.mark.parametrize("value, expected", [(True, SecureAggregationSection()), (False, None),
                                             ({"on_failure": "skip"}, SecureAggregationSection(on_failure="skip"))])
def test_the_secure_setting_reads_as_a_flag_or_a_section(value, expected):
    assert AggregationSection(secure=value).secure == expected


def test_bad_secure_settings_are_named(tmp_path):
    from common.config import ConfigError, load_federation

    base = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    for change, message in [({"aggregation": {"secure": {"reconstruction_threshold": 1.5}}}, "reconstruction_threshold"),
                            ({"aggregation": {"secure": {"reconstruction_threshold": 0.5}}}, "reconstruction_threshold"),
                            ({"aggregation": {"secure": {"on_failure": "ignore"}}}, "on_failure"),
                            ({"aggregation": {"secure": True}, "federation": {**base["federation"],
                                                                              "min_train_institutions": 1}},
                             "min_train_institutions >= 2")]:
        path = tmp_path / "federation.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(ConfigError, match=message):
            load_federation(path)


# -- the run loop: a round below the threshold is retried, skipped or stops the run ------------------
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_sites(tmp_path_factory):
    from common.synthetic.cli import synth_from_config

    root = tmp_path_factory.mktemp("secure-run")
    synth_from_config(TINY, root / "data")
    nodes = {}
    for i, entry in enumerate(yaml.safe_load(TINY.read_text())["institutions"]):
        entry.update(data_dir=str(root / "data" / entry["name"]), state_dir=f"state/{entry['name']}", device="cpu")
        (root / f"{entry['name']}.yaml").write_text(yaml.safe_dump(entry))
        nodes[200 + i] = {"institution": str(root / f"{entry['name']}.yaml")}
    return root, nodes


def secure_run(root, out, on_failure):
    from common.config import load_federation

    config = yaml.safe_load(TINY.read_text())
    config.pop("institutions"), config.pop("data")
    config["aggregation"]["secure"] = {"reconstruction_threshold": 1.0, "on_failure": on_failure, "retries": 1}
    config["central_evaluation"]["data_dir"] = str(root / "data" / "central")
    config.update(output_dir=str(out))
    path = out.parent / f"{on_failure}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_federation(path)


@pytest.mark.parametrize("on_failure", ["retry", "skip", "stop"])
def test_a_round_below_the_threshold_is_retried_skipped_or_stops_the_run(tiny_sites, tmp_path, prepared_training,
                                                                         on_failure):
    from server.run import FederationRun

    root, nodes = tiny_sites
    silent = {"left": 1}  # jackson-lab dies once, while training in its first secure round

    def answers(node, msg):
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if node == 201 and configs and configs[Key.STAGE] == Stage.COLLECT_MASKED_VECTORS and silent["left"]:
            silent["left"] -= 1
            return False
        return True

    events = []
    run = FederationRun(secure_run(root, tmp_path / "out", on_failure), num_rounds=2,
                        audit=lambda event, fields: events.append((event, fields)))
    grid = LocalGrid(client_app.app, {n: {**c} for n, c in nodes.items()}, answers=answers)
    if on_failure == "stop":
        with pytest.raises(SecureRoundIncomplete, match="reconstruction threshold"):
            run.prepare(resume=False).execute(grid)
        return
    run.prepare(resume=False).execute(grid)
    first, second = run.history[1], run.history[2]
    attempts = [(e, f["round"], f["attempt"]) for e, f in events if e.startswith("secure_round")]
    assert {r.status for r in second.institutions.values()} == {Status.TRAINED}
    if on_failure == "retry":
        assert attempts == [("secure_round_failed", 1, 1), ("secure_round", 1, 2), ("secure_round", 2, 1)]
        assert {r.status for r in first.institutions.values()} == {Status.TRAINED}
    else:  # skipped: everyone who was to take part is recorded with the reason; the model stays
        assert attempts == [("secure_round_failed", 1, 1), ("secure_round", 2, 1)]
        assert {r.status for r in first.institutions.values()} == {Status.FAILED}
        assert all("round skipped" in r.reason for r in first.institutions.values())
        assert first.central == run.history[0].central




def test_a_masked_update_whose_epsilon_did_not_rise_is_left_out_before_the_sum_is_opened(institutions, monkeypatch,
                                                                                         prepared_training):
    """Its metadata is checked before unmasking (the sum cannot be taken apart afterwards): the sum is
    opened once, without it, and the others' weights are renormalised."""
    trained = InstitutionAgent.train

    def train(self, model, **kwargs):
        outcome = trained(self, model, **kwargs)
        if self.config.name == "st-olavs":  # says it trained, with the epsilon it had before
            outcome.epsilon = 0.0
        return outcome

    monkeypatch.setattr(InstitutionAgent, "train", train)
    grid = local_grid(institutions)
    model, strategy, secure = secure_round(grid)
    reports = {r.institution: r for r in strategy.rounds[1].train}
    assert reports["st-olavs"].status == Status.REJECTED and "rolled back" in reports["st-olavs"].reason
    stayed = set(NODES) - {"st-olavs"}
    assert {n for n, r in reports.items() if r.status == Status.TRAINED} == stayed
    _, planned = expected_aggregate(model, next(iter(institutions.values())).parent, set(NODES))
    for name, value in renormalised(model, planned.weights, stayed).items():
        np.testing.assert_allclose(secure[name], value, atol=8 * STEP, rtol=0, err_msg=name)


def test_a_plain_round_is_refused_where_secure_aggregation_is_required(institutions, tmp_path):
    from flower_messages import server_request

    entry = yaml.safe_load(institutions["oslo-uh"].read_text())
    entry["privacy"]["require_secure"] = True
    entry.update(data_dir=str(institutions["oslo-uh"].parent / entry["data_dir"]), state_dir=str(tmp_path / "state"))
    path = tmp_path / "oslo-uh.yaml"
    path.write_text(yaml.safe_dump(entry))
    client_app._AGENTS.clear()
    reply = client_app.app(server_request("train", model=MODEL, tasks=TASKS),
                           Context(run_id=1, node_id=7, node_config={"institution": str(path)}, state=RecordDict(),
                                   run_config={}))
    assert reply.content[p.META][p.STATUS] == "refused" and "require_secure" in reply.content[p.META][p.REASON]
    assert p.ARRAYS not in reply.content
    client_app._AGENTS.clear()


@pytest.mark.parametrize("change", ["threshold", "weights"])
def test_an_institution_refuses_what_a_protocol_following_server_could_not_send(institutions, prepared_training,
                                                                                monkeypatch, change):
    """A threshold of half the shares or less, or weights outside [0, 1]: it drops out, sending nothing."""
    import server.secure_aggregation as secure_module

    if change == "threshold":  # as if the server's own check were gone: 2 of 4 shares
        monkeypatch.setattr(secure_module._Workflow, "share_keys_stage", secure_module.SecAggPlusWorkflow.share_keys_stage)
        settings = SETTINGS.model_construct(**{**SETTINGS.model_dump(), "reconstruction_threshold": 0.5})
    else:
        original = secure_module.contributor_weights
        monkeypatch.setattr(secure_module, "contributor_weights", lambda *a, **k: {i: 3.0 for i in original(*a, **k)})
        settings = SETTINGS
    grid = local_grid(institutions)
    with pytest.raises(SecureRoundIncomplete):
        secure_round(grid, settings=settings)
    assert not any(Key.MASKED_PARAMETERS in r.content.config_records.get(RECORD_KEY_CONFIGS, {})
                   for r in grid.replies if not r.has_error())
