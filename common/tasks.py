"""The tasks the shared model learns: one registry entry per task, the single source of truth
for head shape, label names, loss and headline metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # per-position label for padding; never contributes to loss or metrics


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: Literal["sequence", "position"]
    label_names: tuple[str, ...]
    headline_metric: str
    description: str
    # Fixed loss weight per class, or None for plain cross-entropy. Splice sites are ~0.5 % of bases:
    # weighed like a "neither" base, their share of a clipped, noised per-record DP gradient vanishes.
    # Fixed in advance, not fitted to the data (fitting would spend privacy).
    class_weights: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def per_position(self) -> bool:
        return self.kind == "position"


TASKS: dict[str, TaskSpec] = {
    "promoter": TaskSpec("promoter", "sequence", ("non-promoter", "promoter"), "mcc",
                         "is there a transcription start site with its core promoter in the window"),
    "splice": TaskSpec("splice", "position", ("neither", "donor", "acceptor"), "pr_auc_mean",
                       "per base: last exon base before a donor GT, or last intron base of an acceptor AG",
                       class_weights=(1.0, 50.0, 50.0)),
    "coding": TaskSpec("coding", "sequence", ("non-coding", "coding"), "mcc",
                       "does the window hold an open reading frame with the species' codon usage"),
    "enhancer": TaskSpec("enhancer", "sequence", ("non-enhancer", "enhancer"), "mcc",
                         "does the window hold a cluster of transcription-factor binding sites"),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; an unknown name is an error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}") from None


def task_loss(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss over the batch, in the per-sample form DP-SGD needs.

    Sequence tasks: cross-entropy per sequence, mean over the batch.
    Both with the task's fixed ``class_weights`` where it has them (splice).
    Per-position tasks: cross-entropy averaged over each sequence's labelled bases (labels equal to
    ``IGNORE_INDEX`` are padding), then over the batch — so every sequence weighs the same whatever
    its length or the batch's token count (Opacus' ``loss_reduction="mean"`` assumes exactly this).
    """
    spec = get_task(task)
    weight = None if spec.class_weights is None else logits.new_tensor(spec.class_weights)
    if not spec.per_position:  # weighted "mean" would divide by the weights' sum, not by the batch
        return F.cross_entropy(logits, labels, weight=weight, reduction="none").mean()
    # logits [B, L, C], labels [B, L]
    per_base = F.cross_entropy(logits.transpose(1, 2), labels, weight=weight, ignore_index=IGNORE_INDEX,
                               reduction="none")
    valid = (labels != IGNORE_INDEX).to(per_base.dtype)  # [B, L]
    per_sequence = (per_base * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)  # [B]
    return per_sequence.mean()
