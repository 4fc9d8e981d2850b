"""What a federation trains: every parameter, the task heads only, or low-rank adapters (LoRA).

Under DP every trainable coordinate gets noise, so training fewer of them (on a backbone that was
pre-trained on public sequence) leaves more signal per coordinate (Yu et al. 2022; Li et al.
2022). The rule lives here once: the trainer sets ``requires_grad`` from it, the agent sends only
these tensors, and the server expects exactly these tensors from each institution.

* ``all``: the backbone and the head of the task being trained.
* ``heads``: the head only (a probe on a frozen backbone).
* ``lora``: LoRA adapters on every ``nn.Linear`` of the transformer blocks, every LayerNorm, and
  the head; the embeddings, the motif stem and the blocks' own weights stay frozen. Needs
  ``model.lora_rank > 0``.

LoRA without peft (see dp-training.md): :class:`LoRALinear` is an ``nn.Linear`` whose output gains
``(alpha / rank) · B(A(x))``, with ``B`` zero at first so the adapted model starts as the base
model. Its own weight keeps its name, so a checkpoint without adapters loads into it unchanged.
Opacus computes per-sample gradients of ``A`` and ``B`` (plain ``nn.Linear``); the layer's own
weight uses Opacus' linear sampler, registered below, when it is trained too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.grad_sample.linear import compute_linear_grad_sample
from opacus.grad_sample.utils import register_grad_sampler

TrainableMode = Literal["all", "heads", "lora"]
TRAINABLE_MODES: tuple[str, ...] = ("all", "heads", "lora")
HEAD_PREFIX = "heads."  # parameter names under this prefix belong to one task's head
ADAPTER_NAMES = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a trainable low-rank update ``(alpha / rank) · B(A(x))``."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.lora_a = nn.Linear(in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_features, bias=False)
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scale * self.lora_b(self.lora_a(x))


# The layer's own weight and bias get per-sample gradients exactly as an nn.Linear's do.
register_grad_sampler(LoRALinear)(compute_linear_grad_sample)


def add_lora(blocks: nn.Module, *, rank: int, alpha: float) -> None:
    """Replace every ``nn.Linear`` under ``blocks`` by a :class:`LoRALinear` (fresh adapters)."""
    for parent in list(blocks.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                adapted = LoRALinear(child.in_features, child.out_features, rank=rank, alpha=alpha,
                                     bias=child.bias is not None)
                adapted.weight.data.copy_(child.weight.data)
                if child.bias is not None:
                    adapted.bias.data.copy_(child.bias.data)
                parent._modules[name] = adapted


def head_of(parameter_name: str) -> str | None:
    """The task whose head owns a parameter (``heads.<task>.…``), or None for the shared backbone."""
    if parameter_name.startswith(HEAD_PREFIX):
        return parameter_name[len(HEAD_PREFIX):].split(".", 1)[0]
    return None


BACKBONE = "<backbone>"  # the parameter group shared by every task


def group_of(parameter_name: str) -> str:
    """The parameter group averaged as one: a task's head (``heads.<task>.…``), else the backbone."""
    return head_of(parameter_name) or BACKBONE


def is_adapter(parameter_name: str) -> bool:
    """A LoRA adapter's parameter (absent from a model or checkpoint without adapters)."""
    return any(f".{part}." in parameter_name for part in ADAPTER_NAMES)


def _lora_backbone_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        if module_name.startswith(HEAD_PREFIX.rstrip(".")):
            continue
        if isinstance(module, nn.LayerNorm) or module_name.rsplit(".", 1)[-1] in ADAPTER_NAMES:
            names |= {f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)}
    return names


def trainable_names(model: nn.Module, *, mode: str, tasks: Iterable[str]) -> set[str]:
    """The parameter names that training ``tasks`` in ``mode`` updates (and an institution sends).

    Raises:
        ValueError: an unknown mode, or ``lora`` on a model without adapters.
    """
    tasks = set(tasks)
    names = [name for name, _ in model.named_parameters()]
    heads = {n for n in names if head_of(n) in tasks}
    if mode == "all":
        return heads | {n for n in names if head_of(n) is None}
    if mode == "heads":
        return heads
    if mode == "lora":
        adapters = _lora_backbone_names(model)
        if not any(n.rsplit(".", 2)[-2] in ADAPTER_NAMES for n in adapters):
            raise ValueError("training.trainable 'lora' needs a model with adapters (model.lora_rank > 0)")
        return heads | adapters
    raise ValueError(f"training.trainable must be one of {', '.join(TRAINABLE_MODES)}, got {mode!r}")


def set_trainable(model: nn.Module, names: set[str] | None) -> None:
    """``requires_grad`` on exactly ``names`` (None: on every parameter)."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(names is None or name in names)
