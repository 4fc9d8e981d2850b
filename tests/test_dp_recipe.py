"""The recipe's knobs: the learning-rate schedule over the federation, automatic clipping, EMA."""

import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from client.trainer import WeightAverage, _ClippingOptimizer, _Steps
from common.config import TrainingConfig
from common.kmer_paths import is_linear_path_parameter


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
    optimizer.__class__ = _ClippingOptimizer
    optimizer.clipping, optimizer.norm_log = "automatic", []
    optimizer.in_path = [False, False]

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


class _NetWithPath(torch.nn.Module):
    """A network beside a linear path, named as a model head names its paths (``kmers``)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 2)
        self.kmers = torch.nn.Linear(5, 2)

    def forward(self, x, features):
        return self.net(x) + self.kmers(features)


def _grouped_step(model, inputs, y, clip):
    loader = DataLoader(TensorDataset(*inputs, y), batch_size=len(y))
    hooks, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), data_loader=loader,
        noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False, grad_sample_mode="hooks", wrap_model=False)
    optimizer.__class__ = _ClippingOptimizer
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer.clipping, optimizer.norm_log = "grouped", []
    optimizer.in_path = [is_linear_path_parameter(names[id(p)]) for p in optimizer.params]
    torch.nn.functional.cross_entropy(model(*inputs), y).backward()
    per_sample = {n: p.grad_sample.reshape(len(y), -1) for n, p in model.named_parameters()}
    optimizer.step()
    hooks.cleanup()
    return per_sample, {n: p.grad.reshape(-1) for n, p in model.named_parameters()}


def test_grouped_clipping_bounds_the_paths_and_the_network_each_by_c_over_root_two():
    torch.manual_seed(0)
    model, clip = _NetWithPath(), 1.0
    scale = torch.tensor([[0.01], [0.3], [1.0], [3.0], [30.0], [100.0]])
    x, features, y = torch.randn(6, 3) * scale.flip(0), torch.randn(6, 5) * scale, torch.randint(0, 2, (6,))
    per_sample, step = _grouped_step(model, (x, features), y, clip)
    bound = clip / 2 ** 0.5
    for group in (["kmers.weight", "kmers.bias"], ["net.weight", "net.bias"]):
        sample = torch.cat([per_sample[n] for n in group], dim=1)
        factor = torch.clamp(bound / (sample.norm(dim=1) + 1e-6), max=1.0)
        assert (factor < 1).any() and (factor == 1).any()  # some clipped, some not: the check bites
        expected = (sample * factor[:, None]).mean(dim=0)
        torch.testing.assert_close(torch.cat([step[n] for n in group]), expected, rtol=1e-5, atol=1e-7)
        assert torch.all((sample * factor[:, None]).norm(dim=1) <= bound * (1 + 1e-5))
    unclipped = torch.cat([per_sample[n] for n in per_sample], dim=1)
    assert unclipped.norm(dim=1).max() > clip  # and some records' gradients are far beyond it unclipped


def test_grouped_clipping_without_a_path_is_flat_clipping_at_c():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    x, y = torch.randn(6, 3) * torch.tensor([[0.01], [0.1], [1.0], [3.0], [10.0], [30.0]]), torch.randint(0, 2, (6,))
    per_sample, step = _grouped_step(model, (x,), y, 1.0)
    sample = torch.cat(list(per_sample.values()), dim=1)
    expected = (sample * torch.clamp(1.0 / (sample.norm(dim=1) + 1e-6), max=1.0)[:, None]).mean(dim=0)
    torch.testing.assert_close(torch.cat(list(step.values())), expected, rtol=1e-5, atol=1e-7)


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
