"""Local DP-SGD training of the shared model on one institution's data (plain PyTorch + Opacus).

One round trains every task the institution holds, one after the other. Each task gets its own
Opacus wrapping over the parameters its step touches (backbone + that task's head; Opacus refuses
parameters without per-sample gradients), Poisson sampling at ``q = 1/len(loader)``, per-sample
clipping and Gaussian noise. The (sigma, q, steps) each task actually ran is read back from Opacus'
accountant, so the ledger records the steps taken, not the steps planned. All tasks' steps compose
sequentially into the institution's one epsilon.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import secrets
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader

from client.privacy.accounting import Segment
from common.config import TrainingConfig
from common.data.dataset import GenomicDataset, collate
from common.model import GenomicTransformer, head_of, parameters_for_task
from common.tasks import task_loss

log = logging.getLogger(__name__)

# Opacus warns on every engine that its noise comes from torch's PRNG (secure_mode needs
# torchcsprng, which has no wheel for this Python); the README states it once instead. The
# backward-hook note fires because token ids cannot require grad, which is expected here.
warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)



@dataclass
class TaskRound:
    task: str
    examples: int
    steps: int
    mean_loss: float
    segments: list[Segment] = field(default_factory=list)


@dataclass
class RoundResult:
    tasks: dict[str, TaskRound]

    @property
    def segments(self) -> list[Segment]:
        return [s for t in self.tasks.values() for s in t.segments]

    @property
    def examples(self) -> int:
        return sum(t.examples for t in self.tasks.values())


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; an unavailable GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but no CUDA GPU is available")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batches_per_epoch(*, examples: int, batch_size: int) -> int:
    """``len(DataLoader)`` for ``examples`` records in batches of ``batch_size``."""
    return math.ceil(examples / batch_size)


def sample_rate(*, examples: int, batch_size: int) -> float:
    """Poisson sampling rate Opacus will use: ``1 / len(loader)`` for a loader of ``batch_size``."""
    return 1.0 / batches_per_epoch(examples=examples, batch_size=batch_size)


def steps_per_round(*, examples: int, training: TrainingConfig) -> int:
    """Optimizer steps one round takes on one task: ``local_epochs`` epochs, at least one step.
    The budget gate plans with it and the trainer stops at it, so both count the same steps."""
    return max(1, round(training.local_epochs * batches_per_epoch(examples=examples,
                                                                    batch_size=training.batch_size)))


def planned_segments(datasets: dict[str, GenomicDataset], training: TrainingConfig,
                     noise_multiplier: float) -> list[Segment]:
    """The accountant entries one round will add, before it runs (for the budget gate)."""
    segments = []
    for dataset in datasets.values():
        q = sample_rate(examples=len(dataset), batch_size=training.batch_size)
        segments.append((noise_multiplier, q, steps_per_round(examples=len(dataset), training=training)))
    return segments


def _set_trainable(model: GenomicTransformer, task: str | None) -> None:
    """Freeze every head but ``task``'s (None: unfreeze everything)."""
    for name, p in model.named_parameters():
        p.requires_grad_(task is None or head_of(name) in (None, task))


def _make_optimizer(params: list[torch.nn.Parameter], training: TrainingConfig) -> torch.optim.Optimizer:
    if training.optimizer == "sgd":
        return torch.optim.SGD(params, lr=training.learning_rate, momentum=0.9,
                               weight_decay=training.weight_decay)
    return torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay)


def _entropy_generator(device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator


def _step_loss(model: GenomicTransformer, task: str, tokens: torch.Tensor, labels: torch.Tensor,
               autocast: contextlib.AbstractContextManager) -> torch.Tensor:
    with autocast:
        logits = model(tokens, task).logits
    if tokens.shape[0] == 0:
        # Poisson sampling drew no record: the step must still run (noise only, and the accountant
        # counts it), so give Opacus a zero loss with an empty per-sample batch.
        return logits.float().sum() * 0.0
    return task_loss(task, logits.float(), labels)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_task_dp(model: GenomicTransformer, dataset: GenomicDataset, *, training: TrainingConfig,
                  noise_multiplier: float, max_grad_norm: float, accountant: str,
                  device: torch.device) -> TaskRound:
    """DP-SGD on one task for ``training.local_epochs`` epochs of Poisson-sampled batches.

    Returns:
        the task's round: examples, steps taken, mean loss and the accountant segments it spent.
    """
    task = dataset.task.name
    _set_trainable(model, task)
    # The DP mechanism's randomness (which records are sampled, the Gaussian noise) must not be
    # reproducible by anyone who knows the run's seed: both generators start from OS entropy.
    loader = DataLoader(dataset, batch_size=training.batch_size, collate_fn=collate,
                        generator=_entropy_generator("cpu"))
    engine = PrivacyEngine(accountant=accountant)
    hooks, optimizer, dp_loader = engine.make_private(
        module=model, optimizer=_make_optimizer(parameters_for_task(model, task), training),
        data_loader=loader, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        poisson_sampling=True, grad_sample_mode="hooks", wrap_model=False,
        noise_generator=_entropy_generator(device))
    target_steps = steps_per_round(examples=len(dataset), training=training)
    losses: list[float] = []
    try:
        with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=training.max_physical_batch_size,
                                optimizer=optimizer) as physical_loader:
            losses = _run_steps(model, task, physical_loader, optimizer, target_steps, device,
                                _autocast(device, training.precision), engine.accountant)
    finally:
        hooks.cleanup()
        _set_trainable(model, None)
    segments = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.history]
    steps = sum(n for _, _, n in segments)
    return TaskRound(task, len(dataset), steps, float(np.mean(losses)) if losses else float("nan"), segments)


def _run_steps(model, task, physical_loader, optimizer, target_steps, device, autocast,
               accountant) -> list[float]:
    """Iterate physical batches until ``target_steps`` logical (clipped, noised, accounted) steps ran."""
    losses = []

    def steps_taken() -> int:
        return sum(n for _, _, n in accountant.history)

    while steps_taken() < target_steps:
        for tokens, labels in physical_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = _step_loss(model, task, tokens.to(device), labels.to(device), autocast)
            loss.backward()
            optimizer.step()
            if tokens.shape[0]:
                losses.append(loss.item())
            if steps_taken() >= target_steps:
                break
    return losses


def train_task_plain(model: GenomicTransformer, dataset: GenomicDataset, *, training: TrainingConfig,
                     device: torch.device) -> TaskRound:
    """The same local training without DP (the centralized upper bound; ``--no-dp``)."""
    task = dataset.task.name
    _set_trainable(model, task)
    optimizer = _make_optimizer(parameters_for_task(model, task), training)
    loader = DataLoader(dataset, batch_size=training.batch_size, collate_fn=collate, shuffle=True)
    target_steps, steps, losses = steps_per_round(examples=len(dataset), training=training), 0, []
    autocast = _autocast(device, training.precision)
    try:
        while steps < target_steps:
            for tokens, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = _step_loss(model, task, tokens.to(device), labels.to(device), autocast)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                steps += 1
                if steps >= target_steps:
                    break
    finally:
        _set_trainable(model, None)
    return TaskRound(task, len(dataset), steps, float(np.mean(losses)), [])


def train_round(model: GenomicTransformer, datasets: dict[str, GenomicDataset], *, training: TrainingConfig,
                dp: bool, noise_multiplier: float, max_grad_norm: float, accountant: str,
                device: torch.device) -> RoundResult:
    """One local round: every task the institution holds, in a fixed (sorted) order."""
    model.to(device).train()
    results = {}
    for task in sorted(datasets):
        if dp:
            results[task] = train_task_dp(model, datasets[task], training=training,
                                          noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                          accountant=accountant, device=device)
        else:
            results[task] = train_task_plain(model, datasets[task], training=training, device=device)
        log.info("trained %s: %d examples, %d steps, loss %.4f", task, results[task].examples,
                 results[task].steps, results[task].mean_loss)
    return RoundResult(results)


def state_dict_cpu(model: GenomicTransformer) -> dict[str, torch.Tensor]:
    """Weights to send: plain parameter names (no Opacus ``_module.`` prefix), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
