"""The genomic transformer: one backbone, one head per task.

Reads top to bottom: config, positions, embedding, motif stem, attention, block, codon mixer,
heads (each with an optional linear k-mer path, common/kmer_paths.py), model.
Every module with parameters is built from layers Opacus has per-sample gradient samplers for
(nn.Linear, nn.Embedding, nn.LayerNorm, nn.Conv1d), so the model passes
``ModuleValidator.validate(model, strict=True)`` in every configuration and trains under DP-SGD.

Fixes to the seed article's model: padding has its own token and is masked out of attention
(as keys) and out of pooling (masked mean over real bases); attention is hand-written from
nn.Linear because Opacus 1.6's DPMultiheadAttention mixes heads with batch_first=True.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ConfigDict

from common.finetuning import add_lora, trainable_names
from common.kmer_paths import (
    MAX_KMER,
    MAX_KMER_LOGIT_BOUND,
    MAX_KMER_NORM,
    FrameCodonPath,
    SequenceKmerPath,
    WindowKmerPath,
)
from common.tasks import TASK_NAMES, get_task
from common.tokenizer import PAD_ID, VOCAB_SIZE

MODEL_LIMITS = {"d_model": 4096, "n_heads": 64, "n_layers": 64, "d_ff": 16384, "max_len": 65536,
                "vocab_size": 1024, "motif_kernel": 101, "lora_rank": 256, "epigenetic_tracks": 64}


class ModelConfigError(ValueError):
    """A model configuration that cannot build a model; names the field and the value."""


Pooling = Literal["mean", "mean_max"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
# Options set per task: a mapping task -> value, or true/false or a list of tasks (ModelConfig.named_tasks).
PER_TASK_OPTIONS = ("codon_frames", "kmer_both_strands", "kmer_linear", "kmer_logit_bound", "kmer_norm")


def _is_k(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_KMER


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 128
    n_heads: int = 8
    n_layers: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    max_len: int = 512
    vocab_size: int = VOCAB_SIZE
    codon_phase: bool = False  # add an embedding of position mod 3 (reading frame)
    hierarchical: bool = False  # mix the 3 bases of each codon, attend over codons (L/3 tokens)
    epigenetic_tracks: int = 0  # > 0: per-base tracks [B, L, E] fused with the sequence embedding
    motif_kernel: int = 0  # > 0: a convolution of this width over bases before attention (k-mer features)
    lora_rank: int = 0  # > 0: low-rank adapters on the blocks' linear layers (training.trainable: lora)
    lora_alpha: float = 16.0  # adapter scale alpha / rank
    # > 0: each head adds a linear model on k-mers of lengths 1..k (common/kmer_paths.py); or a mapping
    # task -> k for a k per head (0 or absent: no path). The best k differs by task under DP: 5 for motif
    # tasks at 5,000 records per site, 4 where a codon path shares the head (bench/results/dp_recipe.md)
    kmer_linear: int | dict[str, int] = 0
    # true, or the sequence tasks whose k-mer path counts each k-mer with its reverse complement (one
    # input per pair, about half as many noisy weights under DP): for signals on either strand, such as
    # TF sites in enhancers; not for promoters, coding or RNA-binding sites, which are read on one strand
    kmer_both_strands: bool | tuple[str, ...] = False
    # true, or the sequence tasks whose heads add a linear model on in-frame codon usage (best frame):
    # for coding-potential tasks; on others its DP-noised weights only add noise to the logits
    codon_frames: bool | tuple[str, ...] = False
    # How a sequence head summarises the bases: "mean" (masked mean), or "mean_max" (the mean beside the
    # masked max of every channel: a motif's presence anywhere, as a convolutional motif scanner sees it,
    # which a mean over 100-200 bases dilutes; bench/results/dp_recipe.md measures it under DP)
    pooling: Pooling = "mean"
    # > 0: each record's k-mer features (a sequence head's path) are scaled to this L2 norm; or a mapping
    # task -> norm (0 or absent: the raw enrichment, norm 20-130 at k = 4-5). Why: under DP clipping at
    # C = 1 a raw path's per-record gradient is 10-100x C, so every record is clipped at full length
    # until it is fit to within ~1 % and the path takes nearly all of the clipped gradient. Near C the
    # path's gradient fades as a record is fit (as a logistic regression's does) and the network gets
    # its share. Small norms suit tasks the network carries (position: promoter), larger ones tasks the
    # k-mers carry (binding motifs): bench/results/dp_recipe.md, ninth session.
    kmer_norm: float | dict[str, float] = 0.0
    # > 0: each class logit of a sequence head's k-mer path is b·tanh(z / b), within ±b; or a mapping
    # task -> b (0 or absent: unbounded). Why: a raw path learns fast (what a federation with few steps
    # needs) but crowds the network out of the clipped gradient over many steps; bounded, its gradient
    # fades once it is confident about a record, and the network learns the rest. Promoter at 2: near
    # the raw path's MCC with the demo's ~50 steps and the scaled path's with 470 (dp_recipe.md).
    kmer_logit_bound: float | dict[str, float] = 0.0

    # Read by pydantic when this dataclass sits inside a config file's schema: no unknown keys.
    __pydantic_config__ = ConfigDict(extra="forbid")

    def __post_init__(self) -> None:
        positive = ("d_model", "n_heads", "n_layers", "d_ff", "max_len", "vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelConfigError(f"model.{name}: expected a positive integer, got {value!r}")
        # Upper bounds: a config read from a checkpoint or sent by a server must not make us allocate
        # gigabytes (max_len 2e9 would ask for a 1 TB position table).
        for name, limit in MODEL_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise ModelConfigError(f"model.{name}: {value} is above the limit {limit}")
        if self.d_model % self.n_heads:
            raise ModelConfigError(
                f"model.d_model: {self.d_model} is not divisible by model.n_heads {self.n_heads}")
        if self.d_model % 2:  # sine and cosine channels come in pairs
            raise ModelConfigError(f"model.d_model: expected an even number, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"model.dropout: expected 0 <= dropout < 1, got {self.dropout!r}")
        if self.motif_kernel < 0 or (self.motif_kernel and self.motif_kernel % 2 == 0):
            raise ModelConfigError(f"model.motif_kernel: expected 0 or an odd width, got {self.motif_kernel!r}")
        if self.lora_rank < 0 or not self.lora_alpha > 0:
            raise ModelConfigError(f"model.lora_rank/lora_alpha: expected rank >= 0 and alpha > 0, got "
                                   f"{self.lora_rank!r}/{self.lora_alpha!r}")
        if isinstance(self.kmer_linear, Mapping):
            if not all(isinstance(t, str) and _is_k(k) for t, k in self.kmer_linear.items()):
                raise ModelConfigError(f"model.kmer_linear: expected task names mapped to 0..{MAX_KMER}, "
                                       f"got {dict(self.kmer_linear)!r}")
            object.__setattr__(self, "kmer_linear", dict(sorted(self.kmer_linear.items())))
        elif not _is_k(self.kmer_linear):
            raise ModelConfigError(f"model.kmer_linear: expected 0 (off), 1..{MAX_KMER} or a mapping task -> k, "
                                   f"got {self.kmer_linear!r}")
        self._check_per_task_number("kmer_norm", "norm", MAX_KMER_NORM)
        self._check_per_task_number("kmer_logit_bound", "bound", MAX_KMER_LOGIT_BOUND)
        for name in ("codon_phase", "hierarchical"):
            if not isinstance(getattr(self, name), bool):
                raise ModelConfigError(f"model.{name}: expected true or false, got {getattr(self, name)!r}")
        for name in ("codon_frames", "kmer_both_strands"):  # true, false, or the tasks it applies to
            value = getattr(self, name)
            if isinstance(value, list | tuple):  # a list from YAML or JSON, kept as a tuple
                if not all(isinstance(t, str) for t in value):
                    raise ModelConfigError(f"model.{name}: expected true, false or task names, got {value!r}")
                object.__setattr__(self, name, tuple(value))
            elif not isinstance(value, bool):
                raise ModelConfigError(f"model.{name}: expected true, false or task names, got {value!r}")
        pathless = [t for t in self.named_tasks("kmer_both_strands") if not self.kmer_k(t)]
        if self.kmer_both_strands is True and not self.kmer_linear:
            pathless = ["every task"]
        if pathless:
            raise ModelConfigError(f"model.kmer_both_strands: no k-mer path (model.kmer_linear) to count on both "
                                   f"strands for {pathless}")
        if self.pooling not in POOLINGS:
            raise ModelConfigError(f"model.pooling: expected one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.epigenetic_tracks < 0:
            raise ModelConfigError(f"model.epigenetic_tracks: expected >= 0, got {self.epigenetic_tracks!r}")

    def _check_per_task_number(self, option: str, what: str, limit: float) -> None:
        """A k-mer path's numeric option (``kmer_norm``, ``kmer_logit_bound``): one value in [0, limit]
        for every path, or a mapping task -> value for tasks that have a path."""
        def in_range(value) -> bool:
            return (isinstance(value, int | float) and not isinstance(value, bool)
                    and math.isfinite(value) and 0 <= value <= limit)

        value = getattr(self, option)
        expected = f"0 (off), a {what} in (0, {limit:g}] or a mapping task -> {what}"
        if isinstance(value, Mapping):
            if not all(isinstance(t, str) and in_range(v) for t, v in value.items()):
                raise ModelConfigError(f"model.{option}: expected {expected}, got {dict(value)!r}")
            object.__setattr__(self, option, {t: float(v) for t, v in sorted(value.items())})
            pathless = [t for t, v in value.items() if v and not self.kmer_k(t)]
            if pathless:
                raise ModelConfigError(f"model.{option}: no k-mer path (model.kmer_linear) for {pathless}")
        elif not in_range(value):
            raise ModelConfigError(f"model.{option}: expected {expected}, got {value!r}")

    def _value_for(self, option: str, task: str | None):
        """A per-task numeric option's value for ``task``: a mapping's entry (0 when absent) or the one
        value every task shares (``task`` None: that shared value, 0 when the option is a mapping)."""
        value = getattr(self, option)
        return value.get(task, 0) if isinstance(value, dict) else value

    def kmer_k(self, task: str) -> int:
        """The k of ``task``'s head's k-mer path (0: none)."""
        return self._value_for("kmer_linear", task)

    def kmer_norm_of(self, task: str | None) -> float:
        """The L2 norm ``task``'s k-mer features are scaled to (0: raw enrichment; None: every path's)."""
        return float(self._value_for("kmer_norm", task))

    def kmer_logit_bound_of(self, task: str | None) -> float:
        """The bound on ``task``'s k-mer path's logits (0: unbounded; None: every path's)."""
        return float(self._value_for("kmer_logit_bound", task))

    def named_tasks(self, option: str) -> tuple[str, ...]:
        """The tasks a per-task option (:data:`PER_TASK_OPTIONS`) names: a mapping's keys or a list's
        entries; none when it is one value for every task (true, false, a single k)."""
        value = getattr(self, option)
        return tuple(value) if isinstance(value, tuple | dict) else ()

    def applies(self, option: str, task: str | None) -> bool:
        """Whether a per-task option set to true or to a list of tasks (``codon_frames``,
        ``kmer_both_strands``) applies to ``task``'s head (None: to every head, i.e. set to true)."""
        value = getattr(self, option)
        return value is True or (isinstance(value, tuple) and task in value)

    def to_dict(self) -> dict:
        return asdict(self)

    def estimated_parameters(self) -> int:
        """Parameters (and the position table's floats) this config builds, from its sizes alone."""
        d, ff = self.d_model, self.d_ff
        block = 4 * d * d + 2 * d * ff + 9 * d + ff
        return (self.vocab_size * d + self.max_len * d + self.n_layers * block + d * d * self.motif_kernel
                + 4 * d * d)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelConfigError(f"model: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


class ModelOutput(NamedTuple):
    """``logits``: ``[B, C]`` (sequence task) or ``[B, L, C]`` (per-position task).
    ``attentions``: one ``[B, H, T, T]`` map per layer when asked for, else None (T = L, or the
    number of codons in hierarchical mode)."""

    logits: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal encodings. Parameter-free on purpose: Opacus refuses a trainable module
    that owns a buffer, so the buffer lives here alone."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # [max_len, 1]
        inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        if length > self.table.shape[0]:
            raise ValueError(f"sequence length {length} exceeds model.max_len {self.table.shape[0]}")
        return self.table[:length]  # [L, D]


class GenomicEmbedding(nn.Module):
    """Token embedding + positions, optionally + reading frame and epigenetic tracks."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.scale = math.sqrt(config.d_model)
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = SinusoidalPositions(config.max_len, config.d_model)
        self.codon_phase = nn.Embedding(3, config.d_model) if config.codon_phase else None
        self.tracks = None
        if config.epigenetic_tracks:
            self.tracks = nn.Sequential(
                nn.Linear(config.epigenetic_tracks, config.d_model), nn.GELU(),
                nn.Linear(config.d_model, config.d_model))

    def forward(self, tokens: torch.Tensor, tracks: torch.Tensor | None) -> torch.Tensor:
        batch, length = tokens.shape
        x = self.tokens(tokens) * self.scale + self.positions(length)  # [B, L, D]
        if self.codon_phase is not None:
            phase = (torch.arange(length, device=tokens.device) % 3).expand(batch, length)  # [B, L]
            x = x + self.codon_phase(phase)
        if self.tracks is not None:
            if tracks is None or tracks.shape[:2] != tokens.shape:
                got = None if tracks is None else tuple(tracks.shape)
                raise ValueError(f"model expects epigenetic tracks [B, L, E] = [{batch}, {length}, E], got {got}")
            x = x + self.tracks(tracks.to(x.dtype))
        elif tracks is not None:
            raise ValueError("tracks given but model.epigenetic_tracks is 0")
        return x


class MotifStem(nn.Module):
    """A residual convolution over neighbouring bases: each position sees the k-mer around it
    before attention does (what DNABERT gets from k-mer tokens, without changing the vocabulary).

    Padding is zeroed before the convolution, so a real base next to padding sees exactly the
    zeros the convolution's own border padding would give: padding invariance is kept."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.conv = nn.Conv1d(config.d_model, config.d_model, config.motif_kernel, padding=config.motif_kernel // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask.unsqueeze(-1).to(x.dtype)  # [B, L, D], padding zeroed
        return x + F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)  # [B, L, D]


class SelfAttention(nn.Module):
    """Multi-head self-attention from four nn.Linear; padding keys are masked out."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.q = nn.Linear(config.d_model, config.d_model)
        self.k = nn.Linear(config.d_model, config.d_model)
        self.v = nn.Linear(config.d_model, config.d_model)
        self.o = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        return x.view(batch, length, self.n_heads, d_model // self.n_heads).transpose(1, 2)  # [B, H, L, Dh]

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, need_weights: bool):
        q, k, v = self._split_heads(self.q(x)), self._split_heads(self.k(x)), self._split_heads(self.v(x))
        allowed = key_mask[:, None, None, :]  # [B, 1, 1, L], True on real keys
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, H, L, L]
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            context = F.dropout(weights, p=dropout, training=self.training) @ v  # [B, H, L, Dh]
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        batch, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, length, -1)  # [B, L, D]
        return self.o(context), weights


class Block(nn.Module):
    """Pre-norm transformer block (pre-norm keeps noisy DP-SGD updates stable)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attention = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.d_ff, config.d_model))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, need_weights: bool):
        attended, weights = self.attention(self.norm1(x), key_mask, need_weights)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.feed_forward(self.norm2(x)))
        return x, weights


class CodonMixer(nn.Module):
    """Hierarchical mode: bases -> codon tokens (3 bases mixed by one Linear) and back.

    The global transformer then attends over L/3 codons: a ninth of the attention cost."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.mix = nn.Linear(3 * config.d_model, config.d_model)
        self.unmix = nn.Linear(config.d_model, 3 * config.d_model)

    def to_codons(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, d_model = x.shape
        pad = (-length) % 3
        x = F.pad(x * mask.unsqueeze(-1).to(x.dtype), (0, 0, 0, pad))  # [B, 3C, D], padding zeroed
        codon_mask = F.pad(mask, (0, pad)).view(batch, -1, 3).any(dim=-1)  # [B, C]
        return self.mix(x.reshape(batch, -1, 3 * d_model)), codon_mask  # [B, C, D]

    def to_bases(self, codons: torch.Tensor, length: int) -> torch.Tensor:
        batch, n_codons, d_model = codons.shape
        return self.unmix(codons).view(batch, 3 * n_codons, d_model)[:, :length]  # [B, L, D]


class SequenceHead(nn.Module):
    """Masked mean (and with ``pooling="mean_max"`` the masked max) over real bases -> MLP -> class
    logits [B, C]; plus the linear paths' logits when the model has them (``model.kmer_linear``,
    ``model.codon_frames``)."""

    def __init__(self, d_model: int, num_classes: int, dropout: float, kmer_linear: int = 0,
                 codon_frames: bool = False, pooling: str = "mean", *, kmer_both_strands: bool = False,
                 kmer_norm: float = 0.0, kmer_logit_bound: float = 0.0):
        super().__init__()
        self.pooling = pooling
        width = 2 * d_model if pooling == "mean_max" else d_model
        self.mlp = nn.Sequential(nn.Linear(width, d_model // 2), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(d_model // 2, num_classes))
        self.kmers = (SequenceKmerPath(kmer_linear, num_classes, kmer_both_strands, norm=kmer_norm,
                                       logit_bound=kmer_logit_bound) if kmer_linear else None)
        self.codons = FrameCodonPath(num_classes) if codon_frames else None

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        real = (tokens != PAD_ID).unsqueeze(-1)  # [B, L, 1]
        weights = real.to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # [B, D]
        if self.pooling == "mean_max":
            highest = x.masked_fill(~real, torch.finfo(x.dtype).min).amax(dim=1)  # [B, D]
            highest = torch.where(real.any(dim=1), highest, torch.zeros_like(highest))  # no base: 0, as the mean
            pooled = torch.cat([pooled, highest], dim=-1)  # [B, 2D]
        logits = self.mlp(pooled)
        if self.kmers is not None:
            logits = logits + self.kmers(tokens)
        return logits if self.codons is None else logits + self.codons(tokens)


class PositionHead(nn.Module):
    """Per-base MLP -> class logits [B, L, C]; plus the window k-mer path's when the model has one."""

    def __init__(self, d_model: int, num_classes: int, kmer_linear: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model // 2), nn.GELU(), nn.Linear(d_model // 2, num_classes))
        self.kmers = WindowKmerPath(num_classes) if kmer_linear else None

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(x)
        return logits if self.kmers is None else logits + self.kmers(tokens)


class GenomicTransformer(nn.Module):
    """One backbone shared by every institution and task, one head per task."""

    def __init__(self, config: ModelConfig, tasks: tuple[str, ...] = TASK_NAMES):
        super().__init__()
        if not tasks:
            raise ModelConfigError("tasks: expected at least one task")
        self.config = config
        self.tasks = tuple(get_task(t).name for t in tasks)
        # Per-task options may name tasks this model has no head for (one institution's model of a
        # federation's tasks, `helixfed train`): ignored here; the federation's config checks them
        # against its tasks. A name no task has is a typo either way.
        named = {option: config.named_tasks(option) for option in PER_TASK_OPTIONS}
        for option, tasks_named in named.items():
            for name in tasks_named:
                try:
                    get_task(name)
                except ValueError as err:
                    raise ModelConfigError(f"model.{option}: {err}") from None
        for option, path in (("codon_frames", "the codon path"), ("kmer_both_strands", "a canonical k-mer path"),
                             ("kmer_norm", "the scaled k-mer path"),
                             ("kmer_logit_bound", "the bounded k-mer path")):
            wrong = [t for t in named[option] if t in self.tasks and get_task(t).per_position]
            if wrong:
                raise ModelConfigError(f"model.{option}: {wrong} are per-position tasks; {path} scores whole "
                                       f"sequences")
        self.embedding = GenomicEmbedding(config)
        self.stem = MotifStem(config) if config.motif_kernel else None
        self.codons = CodonMixer(config) if config.hierarchical else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        if config.lora_rank:
            add_lora(self.blocks, rank=config.lora_rank, alpha=config.lora_alpha)
        self.norm = nn.LayerNorm(config.d_model)
        self.heads = nn.ModuleDict({t: self._make_head(t) for t in self.tasks})

    def _make_head(self, task: str) -> nn.Module:
        spec, cfg = get_task(task), self.config
        if spec.per_position:
            return PositionHead(cfg.d_model, spec.num_classes, cfg.kmer_k(task))
        return SequenceHead(cfg.d_model, spec.num_classes, cfg.dropout, cfg.kmer_k(task),
                            cfg.applies("codon_frames", spec.name), cfg.pooling,
                            kmer_both_strands=cfg.applies("kmer_both_strands", spec.name),
                            kmer_norm=cfg.kmer_norm_of(spec.name),
                            kmer_logit_bound=cfg.kmer_logit_bound_of(spec.name))

    def encode(self, tokens: torch.Tensor, tracks: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone alone: ``tokens [B, L]`` -> the final-normed per-base representation
        ``[B, L, D]`` that every head reads (masked-base pre-training puts its own head on it)."""
        return self._backbone(tokens, tracks, need_weights=False)[0]

    def _backbone(self, tokens: torch.Tensor, tracks: torch.Tensor | None, need_weights: bool
                  ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        mask = tokens != PAD_ID  # [B, L]
        x = self.embedding(tokens, tracks)  # [B, L, D]
        if self.stem is not None:
            x = self.stem(x, mask)
        base_embedding = x
        key_mask = mask
        if self.codons is not None:
            x, key_mask = self.codons.to_codons(x, mask)  # [B, C, D], [B, C]
        attentions = []
        for block in self.blocks:
            x, weights = block(x, key_mask, need_weights)
            attentions.append(weights)
        if self.codons is not None:
            x = self.codons.to_bases(x, tokens.shape[1]) + base_embedding  # back to [B, L, D]
        return self.norm(x), attentions  # [B, L, D]

    def forward(self, tokens: torch.Tensor, task: str, return_attention: bool = False,
                tracks: torch.Tensor | None = None) -> ModelOutput:
        if task not in self.heads:
            raise ValueError(f"task {task!r} has no head in this model; heads: {', '.join(self.tasks)}")
        x, attentions = self._backbone(tokens, tracks, return_attention)  # [B, L, D]
        logits = self.heads[task](x, tokens)
        return ModelOutput(logits, tuple(attentions) if return_attention else None)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike, *, round: int = 0, state: dict | None = None,
                        card: str | None = None) -> Path:
        """Write this model as a checkpoint directory (``model.safetensors``, ``config.json``,
        ``checkpoint.json``, ``README.md``; see :mod:`common.checkpoint`), as Hugging Face models do."""
        from common.checkpoint import save_checkpoint  # common.checkpoint imports this module

        return save_checkpoint(directory, weights=self.state_dict(), model_config=self.config, tasks=self.tasks,
                               round=round, state=state, card=card)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> GenomicTransformer:
        """The model a checkpoint directory holds, in eval mode (safetensors only: nothing is unpickled).

        Raises:
            common.checkpoint.CheckpointError: not a readable helixfed checkpoint (older and foreign ones included).
        """
        from common.checkpoint import load_model

        return load_model(directory)[0]


def parameters_for_task(model: GenomicTransformer, task: str, *, trainable: str = "all") -> list[nn.Parameter]:
    """What one task's DP-SGD step updates: this task's head and, by ``trainable`` mode, the backbone
    (:func:`common.finetuning.trainable_names`; other heads get no gradient, and Opacus' optimizer
    refuses parameters without per-sample gradients)."""
    names = trainable_names(model, mode=trainable, tasks=(task,))
    return [p for name, p in model.named_parameters() if name in names]
