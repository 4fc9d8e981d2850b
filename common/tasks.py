"""The tasks the shared model learns: one registry entry per task, the single source of truth
for head shape, label names, loss and headline metric."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    description: str = field(compare=False)  # words: a federation and an institution may phrase it differently
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
TASK_NAMES: tuple[str, ...] = tuple(TASKS)  # the presets; a federation may declare more
PRESETS: dict[str, TaskSpec] = dict(TASKS)

TASK_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
CLASS_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,39}$")
# Headline metrics a declared task may choose (common/metrics.py computes them all).
SEQUENCE_HEADLINES = ("mcc", "auroc", "auprc", "accuracy", "balanced_accuracy", "f1")
POSITION_HEADLINES = ("pr_auc_mean", "accuracy")
MAX_CLASSES = 64


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; an unknown name is an error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (declare others in the "
                         f"federation's tasks: section)") from None


def declare_task(name: str, *, kind: str, classes: Sequence[str], metric: str | None = None,
                 description: str = "", class_weights: Sequence[float] | None = None) -> TaskSpec:
    """Register a federation's own task so heads, losses, metrics and reports follow it.

    Declaring a name again with the same definition is a no-op (server, institutions and checkpoints
    all declare what they use); a preset's name, or a different definition, is an error.

    Raises:
        ValueError: a bad name, kind, class list, metric or weights, or a clash with a known task.
    """
    if not re.match(TASK_NAME_PATTERN, name):
        raise ValueError(f"task name {name!r}: expected lower-case letters, digits and _ (a letter first)")
    if kind not in ("sequence", "position"):
        raise ValueError(f"task {name!r}: kind {kind!r}; expected sequence or position")
    classes = tuple(classes)
    if not 2 <= len(classes) <= MAX_CLASSES or len(set(classes)) != len(classes):
        raise ValueError(f"task {name!r}: classes {list(classes)}; expected 2..{MAX_CLASSES} distinct names")
    bad = [c for c in classes if not CLASS_NAME_PATTERN.match(str(c))]
    if bad:
        raise ValueError(f"task {name!r}: class names {bad}; expected letters, digits and _ . + -")
    if kind == "position" and "mean" in classes[1:]:  # pr_auc_mean is the macro average's key
        raise ValueError(f"task {name!r}: class name 'mean' is reserved for position tasks (pr_auc_mean)")
    allowed = POSITION_HEADLINES if kind == "position" else SEQUENCE_HEADLINES
    metric = metric or allowed[0]
    if kind == "sequence" and metric == "pr_auc":  # the name many papers use for average precision
        metric = "auprc"
    if metric not in allowed:
        raise ValueError(f"task {name!r}: metric {metric!r}; a {kind} task reports one of {', '.join(allowed)}")
    weights = None if class_weights is None else tuple(float(w) for w in class_weights)
    if weights is not None and (len(weights) != len(classes) or not all(0 < w < 1e6 for w in weights)):
        raise ValueError(f"task {name!r}: class_weights {list(weights)}; expected one positive weight per class")
    spec = TaskSpec(name, kind, classes, metric, description or f"declared task {name}", weights)  # type: ignore[arg-type]
    known = TASKS.get(name)
    if known is not None and known != spec:
        what = "a built-in task" if name in PRESETS else "declared differently before"
        raise ValueError(f"task {name!r} is {what}: {task_to_dict(known)}; cannot redefine it")
    TASKS[name] = spec
    return spec


def task_to_dict(spec: TaskSpec) -> dict:
    """The declaration of a task (what travels to institutions and into checkpoints)."""
    out = {"kind": spec.kind, "classes": list(spec.label_names), "metric": spec.headline_metric,
           "description": spec.description}
    if spec.class_weights is not None:
        out["class_weights"] = list(spec.class_weights)
    return out


def declare_tasks(declarations: Mapping[str, Mapping]) -> None:
    """:func:`declare_task` for every ``name -> task_to_dict(...)`` entry; presets pass through."""
    for name, declaration in declarations.items():
        if name in PRESETS and not declaration:
            continue
        declare_task(name, **dict(declaration))


def declared_tasks(names: Sequence[str]) -> dict[str, dict]:
    """The declarations of the non-preset tasks among ``names``."""
    return {name: task_to_dict(get_task(name)) for name in names if name not in PRESETS}


def class_weights_after_clipping(task: str, weights: Sequence[float]) -> torch.Tensor:
    """``weights`` (``training.weights_after_clipping[task]``) as a tensor indexed by label, once checked:
    a task with one label per sequence, one weight per class, each in (0, 1] (above 1 a record could
    contribute more than the clipping norm the noise is calibrated to)."""
    spec = get_task(task)
    if spec.per_position:
        raise ValueError(f"{task!r} labels every base; weights after clipping apply to tasks with one label "
                         f"per sequence")
    if len(weights) != spec.num_classes:
        raise ValueError(f"{task!r} has {spec.num_classes} classes {list(spec.label_names)}; got "
                         f"{len(weights)} weights")
    if not all(0.0 < w <= 1.0 for w in weights):
        raise ValueError(f"{task!r}: weights {list(weights)}; expected each in (0, 1]")
    return torch.tensor([float(w) for w in weights])


def task_loss(task: str, logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0
              ) -> torch.Tensor:
    """Mean loss over the batch, in the per-sample form DP-SGD needs.

    Sequence tasks: cross-entropy per sequence, mean over the batch.
    Both with the task's fixed ``class_weights`` where it has them (splice).
    Per-position tasks: cross-entropy averaged over each sequence's labelled bases (labels equal to
    ``IGNORE_INDEX`` are padding), then over the batch — so every sequence weighs the same whatever
    its length or the batch's token count (Opacus' ``loss_reduction="mean"`` assumes exactly this).
    ``label_smoothing`` (training only; ``training.label_smoothing``) mixes each target with the
    uniform distribution over the task's classes, as :func:`torch.nn.functional.cross_entropy` does.
    """
    spec = get_task(task)
    weight = None if spec.class_weights is None else logits.new_tensor(spec.class_weights)
    if not spec.per_position:  # weighted "mean" would divide by the weights' sum, not by the batch
        return F.cross_entropy(logits, labels, weight=weight, reduction="none",
                               label_smoothing=label_smoothing).mean()
    # logits [B, L, C], labels [B, L]
    per_base = F.cross_entropy(logits.transpose(1, 2), labels, weight=weight, ignore_index=IGNORE_INDEX,
                               reduction="none", label_smoothing=label_smoothing)
    valid = (labels != IGNORE_INDEX).to(per_base.dtype)  # [B, L]
    per_sequence = (per_base * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)  # [B]
    return per_sequence.mean()
