"""The recipe's knobs: the learning-rate schedule over the federation, a k-mer path's rate, automatic
clipping, weights after clipping, EMA."""

import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from client.trainer import WeightAverage, _make_optimizer, _set_lr, _Steps
from common.clipping import ClippingOptimizer
from common.config import ConfigError, FederationConfig, TrainingConfig, parse_config
from common.data.dataset import GenomicDataset, collate
from common.model import GenomicTransformer, ModelConfig
from common.synthetic.generator import generate
from common.tasks import task_loss


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [1.0, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [1.0, 0.75, 0.5, 0.25, 0.0]),
    ("cosine", [1.0, 0.8535534, 0.5, 0.1464466, 0.0]),
])
def test_schedules(schedule, expected):
    training = TrainingConfig(learning_rate=1.0, lr_schedule=schedule)
    assert [training.learning_rate_at(x / 4) for x in range(5)] == pytest.approx(expected)


def test_warm_up_and_floor():
    training = TrainingConfig(learning_rate=2.0, lr_schedule="linear", warmup_fraction=0.5, final_lr_fraction=0.1)
    assert [training.learning_rate_at(x) for x in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.0, 1.0, 2.0, 0.2])


def test_a_round_takes_its_share_of_the_schedule():
    # Round 2 of 4 runs from progress 0.25 to 0.5: its first step at 0.75, its last just above 0.5.
    steps = _Steps(target=10, training=TrainingConfig(learning_rate=1.0, lr_schedule="linear"), progress=(0.25, 0.5))
    assert steps.learning_rate(0) == pytest.approx(0.75)
    assert steps.learning_rate(9) == pytest.approx(0.525)


def test_automatic_clipping_scales_every_per_sample_gradient_to_c_over_its_norm():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(6, 3) * torch.tensor([[0.01], [0.1], [1.0], [3.0], [10.0], [30.0]]), torch.randint(0, 2, (6,))
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    hooks, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), data_loader=loader,
        noise_multiplier=0.0, max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode="hooks", wrap_model=False)
    optimizer = ClippingOptimizer.take_over(optimizer, automatic=True)

    torch.nn.functional.cross_entropy(model(x), y).backward()
    per_sample = torch.cat([p.grad_sample.reshape(6, -1) for p in model.parameters()], dim=1)
    optimizer.step()
    hooks.cleanup()

    norms = per_sample.norm(dim=1)
    expected = (per_sample * (1.0 / (norms + 0.01))[:, None]).mean(dim=0)
    step = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(step, expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(optimizer.norm_log[0], norms.detach())
    assert (norms < 1.0).any()  # small gradients were scaled up, which flat clipping never does


def _private_linear(x, y, **engine):
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 2)
    hooks, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        data_loader=DataLoader(TensorDataset(x, y), batch_size=len(x)), noise_multiplier=0.0, max_grad_norm=1.0,
        poisson_sampling=False, grad_sample_mode="hooks", wrap_model=False, **engine)
    optimizer = ClippingOptimizer.take_over(optimizer)
    return model, hooks, optimizer


def test_weights_after_clipping_scale_each_clipped_gradient_and_keep_it_within_c():
    x = torch.randn(6, 3) * torch.tensor([[0.01], [0.1], [1.0], [3.0], [10.0], [30.0]])
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    weights = torch.tensor([0.25, 1.0])[y]
    model, hooks, optimizer = _private_linear(x, y)
    optimizer.record_weights = weights
    torch.nn.functional.cross_entropy(model(x), y).backward()
    per_sample = torch.cat([p.grad_sample.reshape(6, -1) for p in model.parameters()], dim=1)
    optimizer.step()
    hooks.cleanup()

    norms = per_sample.norm(dim=1)
    clipped = per_sample * (1.0 / (norms + 1e-6)).clamp(max=1.0)[:, None]  # Opacus' flat clipping, C = 1
    contributions = clipped * weights[:, None]
    step = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(step, contributions.mean(dim=0), rtol=1e-5, atol=1e-7)
    assert (contributions.norm(dim=1) <= 1.0 + 1e-5).all()  # the sensitivity the noise is calibrated to
    assert (norms > 1.0).any() and (norms < 1.0).any()  # clipped and unclipped records both weighted


@pytest.mark.parametrize("weights", [torch.tensor([1.0, 2.0, 1.0, 1.0]), torch.tensor([1.0, -3.0, 1.0, 1.0]),
                                     torch.tensor([1.0, float("nan"), 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])])
def test_a_record_weight_outside_zero_one_or_one_per_other_batch_is_refused(weights):
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    model, hooks, optimizer = _private_linear(x, y)
    optimizer.record_weights = weights
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"expected one weight in \[0, 1\] per record"):
        optimizer.step()
    hooks.cleanup()


def test_weight_average_warm_start():
    parameter = torch.nn.Parameter(torch.zeros(1))
    average = WeightAverage({"w": parameter}, decay=0.99)
    for value in (1.0, 1.0):
        parameter.data.fill_(value)
        average.update()
    # decays (1+t)/(10+t): 2/11 then 3/12; the average moves toward 1 far faster than 0.99 would.
    first = 1 - 2 / 11
    assert average.average["w"].item() == pytest.approx(first * 3 / 12 + (1 - 3 / 12))
    average.copy_to_model()
    assert parameter.item() == pytest.approx(average.average["w"].item())


def test_the_model_card_says_which_recipe_options_trained_the_model():
    from server.checkpoints import training_summary

    plain = parse_config({"tasks": ["promoter", "splice"]}, FederationConfig)
    assert "label smoothing" not in training_summary(plain) and "after clipping" not in training_summary(plain)
    tuned = parse_config({"tasks": ["promoter", "splice"], "training": {
        "label_smoothing": 0.1, "clipping": "automatic", "weights_after_clipping": {"promoter": [0.5, 1]}}},
        FederationConfig)
    summary = training_summary(tuned)
    assert "automatic clipping" in summary and "label smoothing 0.1" in summary
    assert "weights after clipping promoter [0.5, 1.0]" in summary and summary.endswith("from scratch")
    scaled = parse_config({"tasks": ["promoter", "splice"], "model": {"kmer_linear": {"splice": 2}},
                           "training": {"kmer_path_lr_scale": {"splice": 2}}}, FederationConfig)
    assert "k-mer path learning rate x splice 2" in training_summary(scaled)
    assert "k-mer path" not in summary


def _one_private_step(scale: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One DP-SGD step without noise, from the same weights on the same batch, with splice's k-mer path
    at ``scale`` times the learning rate: (weights before, weights after)."""
    torch.manual_seed(0)
    model = GenomicTransformer(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=128,
                                           kmer_linear={"splice": 2}), tasks=("splice",))
    with torch.no_grad():  # a trained-looking path: a zero-initialised one gets the same gradient either way
        model.heads["splice"].kmers.conv.weight.normal_(0.0, 0.1)
    records = generate(task="splice", species="human", n=8, seed=3, length=100).records
    dataset = GenomicDataset(records, task="splice")
    tokens, labels = collate([dataset[i] for i in range(len(dataset))])
    params = dict(model.named_parameters())
    training = TrainingConfig(optimizer="sgd", learning_rate=0.1, kmer_path_lr_scale={"splice": scale})
    hooks, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=_make_optimizer(params, training, "splice"),
        data_loader=DataLoader(TensorDataset(tokens, labels), batch_size=8), noise_multiplier=0.0,
        max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode="hooks", wrap_model=False)
    before = {n: p.detach().clone() for n, p in params.items()}
    _set_lr(optimizer, training.learning_rate)
    task_loss("splice", model(tokens, "splice").logits, labels).backward()
    optimizer.step()
    hooks.cleanup()
    return before, {n: p.detach().clone() for n, p in params.items()}


def test_a_kmer_path_learning_rate_scale_moves_only_that_path_faster():
    """Same clipped gradient (the scale is not in the loss or the clipping), so the path's step is exactly
    ``scale`` times as long and every other parameter's step is unchanged."""
    start, plain = _one_private_step(1.0)
    start_scaled, scaled = _one_private_step(3.0)
    path = [n for n in plain if n.startswith("heads.splice.kmers.")]
    assert path and all(torch.equal(start[n], start_scaled[n]) for n in plain)
    for name in plain:
        step, step_scaled = plain[name] - start[name], scaled[name] - start[name]
        expected = 3.0 * step if name in path else step
        torch.testing.assert_close(step_scaled, expected, rtol=1e-4, atol=1e-7)
    assert sum(float((plain[n] - start[n]).norm()) for n in path) > 0  # the path did move


@pytest.mark.parametrize("scales, message", [
    ({"splice": 0}, "greater than 0"), ({"splice": -1.0}, "greater than 0"), ({"splice": 101}, "less than or equal to 100"),
    ({"splice": float("nan")}, "finite"), ({"splice": float("inf")}, "finite"),
    ({"enhancer": 2.0}, "'enhancer' is not one of the tasks"), ({"promoter": 2.0}, "'promoter' has no k-mer path")])
def test_a_bad_kmer_path_learning_rate_scale_is_refused_by_name(scales, message):
    with pytest.raises(ConfigError, match="kmer_path_lr_scale") as caught:
        parse_config({"tasks": ["promoter", "splice"], "model": {"kmer_linear": {"splice": 2}},
                      "training": {"kmer_path_lr_scale": scales}}, FederationConfig)
    assert message in str(caught.value)
