"""The classic baseline under the same privacy as the transformer: a k-mer logistic regression
trained with DP-SGD (Opacus: Poisson sampling, per-record clipping, Gaussian noise) at a given
(ε, δ), the comparison Tramèr & Boneh (2021) recommend (hand-made features plus a linear model
often beat end-to-end DP training when records are few).

* Sequence tasks: frequencies of every k-mer of lengths 1..k (:class:`KmerSpectrum`), each
  length's block rescaled to enrichment over a uniform background (``f·4^k − 1``). The scaling is
  fixed in advance: standardising with the data's own means would itself leak the data.
* Splice (per base): a linear model on the one-hot mono- and dinucleotides at every offset of a
  window around each base (a convolution: a DP weighted-degree model with k ≤ 2). A record is a
  sequence, so its per-record gradient sums over all of its bases, as the transformer's does.

σ comes from Opacus' RDP accountant for the epochs, sample rate and (ε, δ) asked for, the same
accountant the institutions' ledgers use by default. Hyper-parameters are fixed, not tuned on the
private data (tuning would spend privacy too).
"""

from __future__ import annotations

import functools
import secrets
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from opacus import PrivacyEngine
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader, TensorDataset

from common.analysis.baselines import N_CODE, KmerSpectrum, dataset_codes
from common.clipping import ClippingOptimizer
from common.data.dataset import GenomicDataset
from common.kmer_paths import WindowKmerPath
from common.metrics import task_metrics
from common.tasks import IGNORE_INDEX, class_weights_after_clipping, get_task, task_loss

# As in client/trainer.py: the PRNG note is stated once in the README; the hook note fires because
# inputs (features, base codes) never require grad.
warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

DP_KMER = "dp_kmer"
DP_KMER_K = 4  # 340 features: fewer noisy coordinates than k = 5's 1,364


@dataclass(frozen=True)
class DPSettings:
    """How the DP baseline trains; the defaults suit 10^3-10^5 records."""

    epsilon: float
    delta: float = 1e-5
    epochs: int = 20
    batch_size: int = 256  # expected (Poisson) batch
    max_grad_norm: float = 1.0
    learning_rate: float = 0.5  # SGD with momentum on clipped, noised gradients
    k: int = DP_KMER_K
    # Per-class weights in (0, 1] on each record's clipped gradient (``training.weights_after_clipping``);
    # None: plain flat clipping. Sequence tasks only.
    weights_after_clipping: tuple[float, ...] | None = None


def enrichment_features(sequences: list[str], *, k: int) -> np.ndarray:
    """k-mer frequencies of lengths 1..k as enrichment over uniform (``f·4^j − 1`` for length j)."""
    frequencies = KmerSpectrum(k=k).fit(sequences).transform(sequences)
    scale = np.concatenate([np.full(4 ** j, 4.0 ** j) for j in range(1, k + 1)])
    return (frequencies * scale - 1.0).astype(np.float32)


def _padded_codes(dataset: GenomicDataset) -> tuple[torch.Tensor, torch.Tensor]:
    codes = dataset_codes(dataset)
    width = max(len(c) for c in codes)
    padded = np.full((len(codes), width), N_CODE, dtype=np.int64)
    labels = np.full((len(codes), width), IGNORE_INDEX, dtype=np.int64)
    for row, (c, y) in enumerate(zip(codes, dataset.labels, strict=True)):
        padded[row, : len(c)] = c
        labels[row, : len(c)] = y.numpy()
    return torch.from_numpy(padded), torch.from_numpy(labels)


def _tensors(dataset: GenomicDataset, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if dataset.task.per_position:
        return _padded_codes(dataset)
    features = enrichment_features(list(dataset.sequences), k=k)
    return torch.from_numpy(features), torch.from_numpy(dataset.label_array().astype(np.int64))


def _model(dataset: GenomicDataset, n_features: int) -> nn.Module:
    spec = dataset.task
    if spec.per_position:  # the same window model as the transformer's per-position k-mer path
        return _CodesWindow(spec.num_classes)
    return nn.Linear(n_features, spec.num_classes)


class _CodesWindow(WindowKmerPath):
    """The window path on base codes (the baseline's inputs), initialised as any Conv1d."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes, zero_init=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.from_codes(codes)


def noise_multiplier_for(settings: DPSettings, *, records: int) -> float:
    """σ that makes ``settings.epochs`` epochs of Poisson batches spend exactly (ε, δ) under RDP."""
    q = min(1.0, settings.batch_size / records)
    steps = max(1, round(settings.epochs / q))
    return _noise_multiplier(float(settings.epsilon), float(settings.delta), q, steps)


@functools.lru_cache(maxsize=256)
def _noise_multiplier(epsilon: float, delta: float, q: float, steps: int) -> float:
    # ~1 s of RDP arithmetic a call; a report's per-species folds (fewer records than a batch: q = 1)
    # all ask for the same (q, steps).
    return get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps,
                                accountant="rdp")


def _class_weights(train: GenomicDataset, settings: DPSettings) -> torch.Tensor | None:
    if settings.weights_after_clipping is None:
        return None
    try:
        return class_weights_after_clipping(train.task.name, settings.weights_after_clipping)
    except ValueError as err:
        raise ValueError(f"DP baseline: weights after clipping: {err}") from err


def train_dp_baseline(train: GenomicDataset, settings: DPSettings) -> tuple[nn.Module, float]:
    """Fit the DP baseline on ``train``; returns the model and the ε its accountant reports."""
    class_weights = _class_weights(train, settings)  # a bad setting fails before any work
    x, y = _tensors(train, settings.k)
    model = _model(train, x.shape[-1])
    sigma = noise_multiplier_for(settings, records=len(train))
    loader = DataLoader(TensorDataset(x, y), batch_size=settings.batch_size,
                        generator=torch.Generator().manual_seed(secrets.randbits(63)))
    engine = PrivacyEngine(accountant="rdp")
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=0.9)
    model, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                   noise_multiplier=sigma, max_grad_norm=settings.max_grad_norm,
                                                   poisson_sampling=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear decay to 0: the last noisy steps move least
        optimizer, lambda step: max(0.0, 1.0 - step / (settings.epochs * len(loader))))
    task = train.task.name
    if class_weights is not None:
        optimizer = ClippingOptimizer.take_over(optimizer)
    for _ in range(settings.epochs):
        for features, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            if class_weights is not None:
                optimizer.record_weights = class_weights[labels]
            logits = model(features)
            # An empty Poisson batch has no loss to average; splice weighs its sites (TaskSpec.class_weights).
            loss = task_loss(task, logits, labels) if len(labels) else logits.sum() * 0.0
            loss.backward()
            optimizer.step()
            schedule.step()
    return model, float(engine.get_epsilon(settings.delta))


@torch.no_grad()
def predict_dp_baseline(model: nn.Module, dataset: GenomicDataset, *, k: int) -> np.ndarray:
    """Class probabilities: ``[n, C]`` for a sequence task, every real base ``[bases, C]`` for splice."""
    x, y = _tensors(dataset, k)
    model.eval()
    prob = model(x).softmax(dim=-1)
    if dataset.task.per_position:
        return prob[y != IGNORE_INDEX].numpy()
    return prob.numpy()


def run_dp_baseline(train: GenomicDataset, test: GenomicDataset, *, task: str,
                    settings: DPSettings) -> dict[str, float]:
    """Fit on ``train`` under (ε, δ), score on ``test`` with the model's metrics, plus the ε spent."""
    spec = get_task(task)
    model, epsilon = train_dp_baseline(train, settings)
    prob = predict_dp_baseline(model, test, k=settings.k)
    return {**task_metrics(spec, test.label_array(), prob), "epsilon": epsilon}
