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
from common.clipping import ClippingOptimizer
from common.config import TrainingConfig
from common.data.dataset import GenomicDataset, collate
from common.finetuning import set_trainable, trainable_names
from common.model import GenomicTransformer
from common.tasks import class_weights_after_clipping, task_loss

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
    clip_stats: dict[str, float] = field(default_factory=dict)  # local log only: never sent


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


def _make_optimizer(params: dict[str, torch.nn.Parameter], training: TrainingConfig, task: str
                    ) -> torch.optim.Optimizer:
    """The task's optimizer: one group at ``learning_rate``, and the task's k-mer path in its own group
    at ``kmer_path_lr_scale`` times it where the training section asks (each group keeps its
    ``lr_scale``, which :func:`_set_lr` applies on every step of the schedule)."""
    scale = training.kmer_path_lr_scale.get(task, 1.0)
    path = {n for n in params if n.startswith(f"heads.{task}.kmers.")} if scale != 1.0 else set()
    groups = [{"params": [p for n, p in params.items() if n not in path], "lr_scale": 1.0}]
    if path:
        groups.append({"params": [p for n, p in params.items() if n in path], "lr_scale": scale})
    if training.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=training.learning_rate, momentum=0.9,
                               weight_decay=training.weight_decay)
    return torch.optim.AdamW(groups, lr=training.learning_rate, weight_decay=training.weight_decay)


def _entropy_generator(device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator


def _step_loss(model: GenomicTransformer, task: str, tokens: torch.Tensor, labels: torch.Tensor,
               autocast: contextlib.AbstractContextManager, label_smoothing: float) -> torch.Tensor:
    with autocast:
        logits = model(tokens, task).logits
    if tokens.shape[0] == 0:
        # Poisson sampling drew no record: the step must still run (noise only, and the accountant
        # counts it), so give Opacus a zero loss with an empty per-sample batch.
        return logits.float().sum() * 0.0
    return task_loss(task, logits.float(), labels, label_smoothing=label_smoothing)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _clip_stats(norm_log: list[torch.Tensor], max_grad_norm: float) -> dict[str, float]:
    """Quantiles of the per-sample gradient norms and the fraction above C: under clipping the
    training loss can rise while the model improves (dp-training.md), so read it beside these."""
    if not norm_log:
        return {}
    norms = torch.cat(norm_log).float()
    p10, p50, p90 = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9])).tolist()
    return {"norm_p10": p10, "norm_p50": p50, "norm_p90": p90,
            "clipped": float((norms > max_grad_norm).float().mean())}


class WeightAverage:
    """Exponential moving average of the trained parameters over a round's steps (De et al. 2022),
    with the usual warm start (the decay grows as (1 + t) / (10 + t)) so a short round is not
    dominated by its first weights. Post-processing of DP iterates: it costs no privacy."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.params, self.decay, self.steps = params, decay, 0
        self.average = {n: p.detach().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for name, p in self.params.items():
            self.average[name].mul_(decay).add_(p.detach(), alpha=1 - decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for name, p in self.params.items():
            p.copy_(self.average[name])


@dataclass
class _Steps:
    """What one task's loop needs besides the batches: where its steps lie in the lr schedule."""

    target: int
    training: TrainingConfig
    progress: tuple[float, float]  # (start, end) of this round in the whole training, 0..1

    def learning_rate(self, step: int) -> float:
        start, end = self.progress
        return self.training.learning_rate_at(start + (end - start) * step / self.target)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _trained_parameters(model: GenomicTransformer, task: str, training: TrainingConfig
                        ) -> dict[str, torch.nn.Parameter]:
    names = trainable_names(model, mode=training.trainable, tasks=(task,))
    set_trainable(model, names)
    return {n: p for n, p in model.named_parameters() if n in names}


def _forget_per_sample_state(model: GenomicTransformer) -> None:
    # Opacus leaves the last step's per-sample gradients and clipped sum on every parameter; the
    # next task's or round's optimizer must not see them.
    for p in model.parameters():
        p.grad_sample = None
        p.summed_grad = None


def train_task_dp(model: GenomicTransformer, dataset: GenomicDataset, *, training: TrainingConfig,
                  noise_multiplier: float, max_grad_norm: float, accountant: str,
                  device: torch.device, progress: tuple[float, float] = (0.0, 1.0)) -> TaskRound:
    """DP-SGD on one task for ``training.local_epochs`` epochs of Poisson-sampled batches.

    Args:
        progress: where this round starts and ends in the whole training (the lr schedule's clock).

    Returns:
        the task's round: examples, steps taken, mean loss and the accountant segments it spent.
    """
    task = dataset.task.name
    params = _trained_parameters(model, task, training)
    # The DP mechanism's randomness (which records are sampled, the Gaussian noise) must not be
    # reproducible by anyone who knows the run's seed: both generators start from OS entropy.
    loader = DataLoader(dataset, batch_size=training.batch_size, collate_fn=collate,
                        generator=_entropy_generator("cpu"))
    engine = PrivacyEngine(accountant=accountant)
    hooks, optimizer, dp_loader = engine.make_private(
        module=model, optimizer=_make_optimizer(params, training, task),
        data_loader=loader, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        poisson_sampling=True, grad_sample_mode="hooks", wrap_model=False,
        noise_generator=_entropy_generator(device))
    optimizer = ClippingOptimizer.take_over(optimizer, automatic=training.clipping == "automatic")
    steps = _Steps(steps_per_round(examples=len(dataset), training=training), training, progress)
    average = WeightAverage(params, training.ema_decay) if training.ema_decay else None
    losses: list[float] = []
    try:
        with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=training.max_physical_batch_size,
                                optimizer=optimizer) as physical_loader:
            losses = _run_steps(model, task, physical_loader, optimizer, steps, device,
                                _autocast(device, training.precision), engine.accountant, average)
    finally:
        hooks.cleanup()
        _forget_per_sample_state(model)
        set_trainable(model, None)
    if average is not None:
        average.copy_to_model()
    segments = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.history]
    return TaskRound(task, len(dataset), sum(n for _, _, n in segments),
                     float(np.mean(losses)) if losses else float("nan"), segments,
                     _clip_stats(optimizer.norm_log, max_grad_norm))


def _run_steps(model, task, physical_loader, optimizer, steps: _Steps, device, autocast, accountant,
               average: WeightAverage | None) -> list[float]:
    """Iterate physical batches until ``steps.target`` logical (clipped, noised, accounted) steps ran."""
    losses = []

    def steps_taken() -> int:
        return sum(n for _, _, n in accountant.history)

    class_weights = steps.training.weights_after_clipping.get(task)
    if class_weights is not None:  # checked here too: a server's training section skips the file checks
        class_weights = class_weights_after_clipping(task, class_weights)
    while steps_taken() < steps.target:
        for tokens, labels in physical_loader:
            taken = steps_taken()
            _set_lr(optimizer, steps.learning_rate(taken))
            optimizer.zero_grad(set_to_none=True)
            if class_weights is not None:
                optimizer.record_weights = class_weights[labels]
            loss = _step_loss(model, task, tokens.to(device), labels.to(device), autocast,
                              steps.training.label_smoothing)
            loss.backward()
            optimizer.step()
            if tokens.shape[0]:
                losses.append(loss.item())
            if average is not None and steps_taken() > taken:  # a logical step, not a physical one
                average.update()
            if steps_taken() >= steps.target:
                break
    return losses


def train_task_plain(model: GenomicTransformer, dataset: GenomicDataset, *, training: TrainingConfig,
                     device: torch.device, progress: tuple[float, float] = (0.0, 1.0)) -> TaskRound:
    """The same local training without DP (the centralized upper bound; ``--no-dp``)."""
    task = dataset.task.name
    params = _trained_parameters(model, task, training)
    optimizer = _make_optimizer(params, training, task)
    loader = DataLoader(dataset, batch_size=training.batch_size, collate_fn=collate, shuffle=True)
    steps = _Steps(steps_per_round(examples=len(dataset), training=training), training, progress)
    taken, losses = 0, []
    autocast = _autocast(device, training.precision)
    try:
        while taken < steps.target:
            for tokens, labels in loader:
                _set_lr(optimizer, steps.learning_rate(taken))
                optimizer.zero_grad(set_to_none=True)
                loss = _step_loss(model, task, tokens.to(device), labels.to(device), autocast,
                                  steps.training.label_smoothing)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                taken += 1
                if taken >= steps.target:
                    break
    finally:
        set_trainable(model, None)
    return TaskRound(task, len(dataset), taken, float(np.mean(losses)), [])


def train_round(model: GenomicTransformer, datasets: dict[str, GenomicDataset], *, training: TrainingConfig,
                dp: bool, noise_multiplier: float, max_grad_norm: float, accountant: str,
                device: torch.device, progress: tuple[float, float] = (0.0, 1.0)) -> RoundResult:
    """One local round: every task the institution holds, in a fixed (sorted) order.

    Args:
        progress: where this round starts and ends in the whole training, for the lr schedule
            (round r of R: ``((r - 1) / R, r / R)``).
    """
    model.to(device).train()
    results = {}
    for task in sorted(datasets):
        if dp:
            results[task] = train_task_dp(model, datasets[task], training=training,
                                          noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                          accountant=accountant, device=device, progress=progress)
        else:
            results[task] = train_task_plain(model, datasets[task], training=training, device=device,
                                             progress=progress)
        stats = results[task].clip_stats
        log.info("trained %s: %d examples, %d steps, loss %.4f, per-sample gradient norm p50 %.3g p90 %.3g, "
                 "clipped %.0f%%", task, results[task].examples, results[task].steps, results[task].mean_loss,
                 stats.get("norm_p50", math.nan), stats.get("norm_p90", math.nan),
                 100 * stats.get("clipped", math.nan))
    return RoundResult(results)


def state_dict_cpu(model: GenomicTransformer, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Weights to send, on the CPU: every tensor, or only ``names`` (what this round trained)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if names is None or k in names}
