"""The ClientApp called as Flower calls it (a Message and a Context): train and evaluate replies
carry weights and aggregate numbers only; a refusal is a reply, not an error."""


import pytest
import yaml
from flower_messages import institution_context, server_request
from flwr.app import ConfigRecord, Message, MetricRecord

from client import app as client_app
from common import protocol as p
from common.data.readers import load_dataset
from common.data.writers import write_split_tables
from common.finetuning import head_of
from common.model import GenomicTransformer, ModelConfig
from common.synthetic.generator import generate

MODEL = ModelConfig(d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0, max_len=192)
TASKS = ("promoter", "splice", "coding", "enhancer")


@pytest.fixture(scope="module")
def institution_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    for i, (task, length) in enumerate((("promoter", 170), ("splice", 100))):
        records = generate(task=task, species="mouse", n=50, seed=i, length=length).records
        write_split_tables(root / "data" / task, {"train": records[:30], "val": records[30:40],
                                                  "test": records[40:]})
    path = root / "jackson-lab.yaml"
    path.write_text(yaml.safe_dump({
        "name": "jackson-lab", "species": "mouse", "tasks": ["promoter", "splice"], "data_dir": "data",
        "state_dir": "state", "device": "cpu",
        "privacy": {"epsilon": 4.0, "delta": 1e-3, "noise_multiplier": 1.5},
        "training": {"batch_size": 10, "learning_rate": 0.003}}))
    return path


@pytest.fixture(autouse=True)
def task_identity():
    """What Flower's runtime sets in a ClientApp process before any message is built."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def request(message_type):
    return server_request(message_type, model=MODEL, tasks=TASKS)


context = institution_context


def private_strings(institution_file):
    """Every sequence, id and label string the institution holds."""
    strings = set()
    for task in ("promoter", "splice"):
        for split in ("train", "val", "test"):
            data = load_dataset(institution_file.parent / "data" / task, task=task, split=split)
            strings.update(data.sequences)
            strings.update(data.ids)
            if task == "splice":
                strings.update("".join(map(str, lab.tolist())) for lab in data.labels)
    return strings


def reply_strings(reply: Message) -> list[str]:
    found = []
    for name, record in reply.content.items():
        found.append(name)
        if isinstance(record, (ConfigRecord, MetricRecord)):
            for key, value in record.items():
                found.append(key)
                if isinstance(value, str):
                    found.append(value)
    return found


def test_train_reply_holds_weights_and_aggregates_only(institution_file):
    client_app._AGENTS.clear()
    reply = client_app.app(request("train"), context(institution_file))
    assert not reply.has_error(), reply.error
    content = reply.content
    assert set(content.keys()) == {p.ARRAYS, p.METRICS, p.META}
    metrics = content[p.METRICS]
    assert metrics[p.REFUSED] == 0.0 and metrics[p.NUM_EXAMPLES] == 60
    assert metrics[p.task_key("splice", p.NUM_EXAMPLES)] == 30
    assert 0 < metrics[p.EPSILON] <= 4.0
    assert content[p.META][p.INSTITUTION] == "jackson-lab" and content[p.META][p.SPECIES] == "mouse"
    secrets = private_strings(institution_file)
    leaked = [s for s in reply_strings(reply) if any(x in s for x in secrets)]
    assert leaked == []
    every = GenomicTransformer(MODEL, tasks=TASKS).state_dict()
    # Only what it trained: the backbone and the heads of the two tasks it holds.
    assert set(content[p.ARRAYS].keys()) == {n for n in every if head_of(n) in (None, "promoter", "splice")}


def test_evaluate_reply_holds_metrics_only(institution_file, tmp_path):
    client_app._AGENTS.clear()
    sharing = yaml.safe_load(institution_file.read_text())  # federated evaluation is opt-in
    sharing["privacy"]["share_evaluation"] = True
    sharing.update(data_dir=str(institution_file.parent / "data"), state_dir=str(tmp_path / "state"))
    (tmp_path / "sharing.yaml").write_text(yaml.safe_dump(sharing))
    reply = client_app.app(request("evaluate"), context(tmp_path / "sharing.yaml"))
    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {p.METRICS, p.META}
    assert reply.content[p.METRICS][p.task_key("promoter", p.NUM_EXAMPLES)] == 10
    secrets = private_strings(institution_file)
    assert not [s for s in reply_strings(reply) if any(x in s for x in secrets)]


def test_exhausted_budget_is_a_refusal_reply_not_an_error(institution_file):
    client_app._AGENTS.clear()
    statuses = []
    for _ in range(12):
        reply = client_app.app(request("train"), context(institution_file))
        assert not reply.has_error(), reply.error
        statuses.append(reply.content[p.META][p.STATUS])
        if statuses[-1] == "refused":
            break
    assert statuses[-1] == "refused"
    assert p.ARRAYS not in reply.content
    assert reply.content[p.METRICS][p.REFUSED] == 1.0
    assert reply.content[p.METRICS][p.EPSILON] <= 4.0
