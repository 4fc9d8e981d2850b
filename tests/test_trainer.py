"""The institution's side without Flower: DP trainer, agent, budget gate, what leaves the site."""

import math

import pytest
import torch

from client.agent import InstitutionAgent
from client.privacy.ledger import PrivacyLedger, compute_epsilon
from client.trainer import planned_segments, train_round
from common.config import InstitutionConfig, PrivacyConfig, TrainingConfig
from common.data.writers import write_split_tables
from common.finetuning import head_of
from common.model import GenomicTransformer, ModelConfig
from common.protocol import Status
from common.synthetic.generator import generate
from common.tasks import IGNORE_INDEX, task_loss

MODEL = ModelConfig(d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0, max_len=192)
TRAINING = TrainingConfig(batch_size=16, max_physical_batch_size=8, learning_rate=3e-3)
LENGTHS = {"promoter": 170, "splice": 100}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("institution-data")
    for i, task in enumerate(("promoter", "splice")):
        records = generate(task=task, species="human", n=60, seed=10 + i, length=LENGTHS[task]).records
        write_split_tables(root / task, {"train": records[:40], "val": records[40:50], "test": records[50:]})
    return root


def institution(data_dir, state_dir, **privacy):
    settings = {"epsilon": 8.0, "delta": 1e-3, "max_grad_norm": 1.0, "noise_multiplier": 1.0, **privacy}
    return InstitutionConfig(name="oslo-uh", species="human", tasks=("promoter", "splice"), data_dir=data_dir,
                             state_dir=state_dir, device="cpu", privacy=PrivacyConfig(**settings),
                             training=TRAINING)


def fresh_model(seed=0):
    torch.manual_seed(seed)
    return GenomicTransformer(MODEL)


def flat(model):
    return torch.cat([v.reshape(-1) for v in model.state_dict().values()])


def test_dp_noise_makes_two_runs_from_the_same_weights_differ(data_dir, tmp_path):
    agent = InstitutionAgent(institution(data_dir, tmp_path))
    train = agent.data("train")
    results = []
    for _ in range(2):
        model = fresh_model()
        torch.manual_seed(123)  # same seed: only the DP mechanism's own entropy differs
        train_round(model, train, training=TRAINING, dp=True, noise_multiplier=1.0, max_grad_norm=1.0,
                    accountant="rdp", device=torch.device("cpu"))
        results.append(flat(model))
    assert not torch.allclose(results[0], results[1])


def test_without_dp_two_runs_from_the_same_weights_and_seed_agree(data_dir, tmp_path):
    agent = InstitutionAgent(institution(data_dir, tmp_path))
    train = agent.data("train")
    results = []
    for _ in range(2):
        model = fresh_model()
        torch.manual_seed(123)
        train_round(model, train, training=TRAINING, dp=False, noise_multiplier=0.0, max_grad_norm=1.0,
                    accountant="rdp", device=torch.device("cpu"))
        results.append(flat(model))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_round_spends_exactly_the_planned_steps_and_the_ledger_composes_them(data_dir, tmp_path):
    agent = InstitutionAgent(institution(data_dir, tmp_path))
    planned = planned_segments(agent.data("train"), agent.training, 1.0)
    outcome = agent.train(fresh_model(), run_id="r1", server_round=1)
    assert outcome.status == Status.TRAINED
    assert list(agent.ledger.rounds[-1].segments) == planned
    expected = compute_epsilon(history=planned, delta=1e-3, accountant="rdp")
    assert outcome.epsilon == pytest.approx(expected, rel=1e-9)
    reopened = PrivacyLedger.load(tmp_path)  # a restart reads the same epsilon back
    assert reopened.epsilon() == pytest.approx(expected, rel=1e-9)


def test_weights_sent_back_have_plain_names(data_dir, tmp_path):
    agent = InstitutionAgent(institution(data_dir, tmp_path))
    model = fresh_model()
    outcome = agent.train(model, run_id="r1", server_round=1)
    held = {n for n in fresh_model().state_dict() if head_of(n) in (None, "promoter", "splice")}
    assert set(outcome.weights) == held  # the backbone and the held tasks' heads: nothing untrained
    assert not any(k.startswith("_module.") for k in outcome.weights)


def test_agent_refuses_a_round_past_its_budget_and_spends_nothing(data_dir, tmp_path):
    agent = InstitutionAgent(institution(data_dir, tmp_path, epsilon=3.0))
    statuses = [agent.train(fresh_model(), run_id="r", server_round=r).status for r in range(1, 8)]
    assert Status.REFUSED in statuses
    first_refusal = statuses.index(Status.REFUSED)
    assert all(s == Status.REFUSED for s in statuses[first_refusal:])  # once out, out
    assert agent.ledger.epsilon() <= 3.0
    assert len(agent.ledger.rounds) == first_refusal
    refused = agent.train(fresh_model(), run_id="r", server_round=9)
    assert refused.weights is None and refused.epsilon == pytest.approx(agent.ledger.epsilon())
    assert "budget exhausted" in refused.reason


def test_planned_rounds_choose_a_sigma_that_fits_the_budget(data_dir, tmp_path):
    config = institution(data_dir, tmp_path, noise_multiplier=None, planned_rounds=3, epsilon=6.0)
    agent = InstitutionAgent(config)
    for r in range(1, 4):
        assert agent.train(fresh_model(), run_id="r", server_round=r).status == Status.TRAINED
    assert 0.9 * 6.0 <= agent.ledger.epsilon() <= 6.0


def test_delta_must_be_below_one_over_records(data_dir, tmp_path):
    agent = InstitutionAgent(institution(data_dir, tmp_path, delta=0.05))  # 80 records: 1/80 = 0.0125
    with pytest.raises(ValueError, match=r"privacy.delta 0.05 must be below 1/records = 1/80"):
        agent.data("train")


def test_evaluation_reports_every_task(data_dir, tmp_path):
    agent = InstitutionAgent(institution(data_dir, tmp_path))
    metrics = agent.evaluate(fresh_model())
    assert set(metrics) == {"promoter", "splice"}
    assert metrics["promoter"]["num-examples"] == 10 and math.isfinite(metrics["splice"]["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast path)")
def test_bf16_on_gpu_keeps_per_sample_clipping(data_dir, tmp_path):
    config = institution(data_dir, tmp_path).model_copy(update={
        "device": "cuda", "training": TRAINING.model_copy(update={"precision": "bf16"})})
    outcome = InstitutionAgent(config).train(fresh_model(), run_id="gpu", server_round=1)
    assert outcome.status == Status.TRAINED
    assert all(torch.isfinite(v).all() for v in outcome.weights.values())


def test_label_smoothing_trains_on_mixed_targets_and_keeps_padding_out():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    labels = torch.tensor([1, 0])
    s = 0.2  # targets: 1 - s + s/2 on the label, s/2 on the other class
    log_p = logits.log_softmax(dim=-1)
    target = torch.full_like(log_p, s / 2)
    target[torch.arange(2), labels] = 1 - s + s / 2
    expected = -(target * log_p).sum(dim=-1).mean()
    torch.testing.assert_close(task_loss("promoter", logits, labels, label_smoothing=s), expected)
    torch.testing.assert_close(task_loss("promoter", logits, labels, label_smoothing=0.0),
                               torch.nn.functional.cross_entropy(logits, labels))
    # Per-position: padded bases add nothing, smoothed or not (same loss with or without them).
    per_base = torch.randn(1, 5, 3)
    real = torch.tensor([[0, 1, 2]])
    padded = torch.tensor([[0, 1, 2, IGNORE_INDEX, IGNORE_INDEX]])
    torch.testing.assert_close(task_loss("splice", per_base, padded, label_smoothing=s),
                               task_loss("splice", per_base[:, :3], real, label_smoothing=s))


def test_label_smoothing_reaches_the_trainer_under_dp_and_without(data_dir, tmp_path):
    agent = InstitutionAgent(institution(data_dir, tmp_path))
    train = agent.data("train")
    smoothed = TRAINING.model_copy(update={"label_smoothing": 0.3})
    results = {}
    for name, training in (("plain", TRAINING), ("smoothed", smoothed), ("smoothed again", smoothed)):
        model = fresh_model()
        torch.manual_seed(123)
        train_round(model, train, training=training, dp=False, noise_multiplier=0.0, max_grad_norm=1.0,
                    accountant="rdp", device=torch.device("cpu"))
        results[name] = flat(model)
    torch.testing.assert_close(results["smoothed"], results["smoothed again"], rtol=0, atol=0)
    assert not torch.allclose(results["plain"], results["smoothed"])
    # Under DP the smoothed loss is still a mean of per-record losses: Opacus clips and counts as before.
    result = train_round(fresh_model(), train, training=smoothed, dp=True, noise_multiplier=1.0,
                         max_grad_norm=1.0, accountant="rdp", device=torch.device("cpu"))
    assert all(math.isfinite(t.mean_loss) and t.segments for t in result.tasks.values())
    assert all("clipped" in t.clip_stats for t in result.tasks.values())  # per-sample norms were clipped


def test_weights_after_clipping_reach_the_dp_trainer_per_record_label(data_dir, tmp_path):
    """Without noise and with plain SGD the update is the weighted sum of clipped gradients: weights near
    zero on every class leave the promoter head (a sequence task) nearly where it started, weights of 1
    move it; splice, which has no weights, trains as before."""
    train = InstitutionAgent(institution(data_dir, tmp_path)).data("train")
    sgd = TRAINING.model_copy(update={"optimizer": "sgd", "learning_rate": 0.5})
    moved = {}
    for name, weights in (("one", {"promoter": (1.0, 1.0)}), ("tiny", {"promoter": (1e-6, 1e-6)})):
        model, start = fresh_model(), flat(fresh_model())
        result = train_round(model, train, training=sgd.model_copy(update={"weights_after_clipping": weights}),
                             dp=True, noise_multiplier=0.0, max_grad_norm=1.0, accountant="rdp",
                             device=torch.device("cpu"))
        assert result.tasks["promoter"].steps and result.tasks["splice"].steps
        head = [n for n, _ in model.named_parameters() if head_of(n) == "promoter"]
        state = dict(model.named_parameters())
        initial = dict(fresh_model().named_parameters())
        moved[name] = sum(float((state[n] - initial[n]).detach().norm()) for n in head)
        assert not torch.equal(flat(model), start)  # splice trained either way
    assert moved["tiny"] < 1e-4 < moved["one"]


def test_weights_after_clipping_for_a_per_base_task_are_refused(data_dir, tmp_path):
    """A training section that skipped the file checks (a server's message) is checked again here."""
    train = InstitutionAgent(institution(data_dir, tmp_path)).data("train")
    bad = TRAINING.model_copy(update={"weights_after_clipping": {"splice": (1.0, 1.0, 1.0)}})
    with pytest.raises(ValueError, match="'splice' labels every base"):
        train_round(fresh_model(), train, training=bad, dp=True, noise_multiplier=1.0, max_grad_norm=1.0,
                    accountant="rdp", device=torch.device("cpu"))
