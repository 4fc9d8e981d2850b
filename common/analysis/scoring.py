"""Analysis of a trained model: predictions for raw sequences, attention maps and their entropy,
the Shannon entropy of a sequence, and the impact of a variant (reference vs alternative).

Motif discovery from attention lives in :mod:`common.analysis.motifs`; figures in
:mod:`common.analysis.plots`.

Fixes to the seed article's analysis code, keeping its ideas:

* ``predict_variant_impact`` subtracted the attention maps of reference and variant, which have
  different shapes as soon as the variant is an insertion or deletion. Here the maps are compared
  only on the positions the two sequences share (the common prefix and suffix around the edit),
  mapped through that alignment.
* It summed Frobenius norms over every head unnormalised (so the number grew with length and
  head count), averaged that with a norm of raw logits (another scale), and compared the tensor
  with 0.5. Here both parts live in [0, 1] (a probability change; a per-query attention change
  scaled by its maximum), and the label comes from a documented threshold on a float.
* The seed's "information content of attention" is the entropy of each query's attention
  distribution, over real keys only (padding gets no weight), in bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from common.model import GenomicTransformer
from common.tasks import get_task
from common.tokenizer import A_ID, C_ID, G_ID, PAD_ID, T_ID, encode

# impact = (|change in P(functional class)| + attention change) / 2, both in [0, 1]. A variant is
# "high" impact from 0.1 up: a probability change of 0.2 with no change in attention, or a smaller
# one with the attention rearranged. A rule of thumb, not a calibration: a small model trained for
# 15 CPU-minutes on generated human data (promoter MCC ~0.13) gave every generated pair an impact
# below 0.03, neutral SNVs as high as site-destroying ones, so it labelled them all "low".
HIGH_IMPACT_THRESHOLD = 0.1
HIGH_IMPACT, LOW_IMPACT = "high", "low"
CODON = 3  # bases per token in hierarchical mode


class AnalysisError(ValueError):
    """An analysis request the model cannot answer: a task without a head, a layer or head out of
    range, a variant that names an unknown task. The message says what was given and what exists."""


# ---------------------------------------------------------------- tokens and predictions


def require_task(model: GenomicTransformer, task: str) -> str:
    """``task`` if the model has a head for it, else AnalysisError listing the heads."""
    if task not in model.tasks:
        raise AnalysisError(f"unknown task {task!r}: this model has heads for {', '.join(model.tasks)}")
    return task


def tokenize(sequences: Sequence[str], *, max_len: int) -> list[np.ndarray]:
    """Token ids of each sequence, checked.

    Raises:
        SequenceError: an empty sequence, one over ``max_len``, or a non-nucleotide character; the
            message names the sequence's 0-based index and the 1-based position.
    """
    return [encode(seq, index=i, max_len=max_len) for i, seq in enumerate(sequences)]


def pad(token_rows: Sequence[np.ndarray]) -> torch.Tensor:
    """Right-pad token rows with ``PAD_ID`` into one ``int64 [B, L]`` tensor."""
    width = max(len(row) for row in token_rows)
    tokens = torch.full((len(token_rows), width), PAD_ID, dtype=torch.int64)
    for i, row in enumerate(token_rows):
        tokens[i, : len(row)] = torch.from_numpy(np.asarray(row, dtype=np.int64))
    return tokens


def functional_probability(probabilities: np.ndarray) -> np.ndarray:
    """P(any class but class 0) along the last axis. Class 0 is the "nothing here" class of every
    task (non-promoter, neither, non-coding, non-enhancer), so this is the probability that the
    element the task looks for is present (for splice: that a base is a donor or acceptor)."""
    return 1.0 - probabilities[..., 0]


@torch.no_grad()
def predict_sequences(model: GenomicTransformer, *, sequences: Sequence[str], task: str,
                      batch_size: int = 64) -> list[np.ndarray]:
    """Class probabilities for raw sequences, in eval mode.

    Args:
        model: the model.
        sequences: DNA/RNA strings (see :func:`common.tokenizer.encode` for what is accepted).
        task: one of the model's heads.
        batch_size: sequences per forward pass.

    Returns:
        One ``float64`` array per sequence: ``[C]`` for sequence tasks, ``[L, C]`` (one row per
        base) for per-position tasks.

    Raises:
        AnalysisError: the model has no head for ``task``.
        SequenceError: a bad sequence (index and position named).
    """
    require_task(model, task)
    token_rows = tokenize(sequences, max_len=model.config.max_len)
    model.eval()
    results: list[np.ndarray] = []
    for start in range(0, len(token_rows), batch_size):
        rows = token_rows[start: start + batch_size]
        probabilities = model(pad(rows), task).logits.float().softmax(dim=-1).double().numpy()
        if get_task(task).per_position:
            results.extend(p[: len(row)] for p, row in zip(probabilities, rows, strict=True))
        else:
            results.extend(probabilities)
    return results


# ---------------------------------------------------------------- attention and entropy


@dataclass(frozen=True)
class AttentionMaps:
    """Every attention map of one sequence.

    ``weights`` is ``float64 [layers, heads, T, T]``, row = query, column = key, each row summing
    to 1. ``tokens`` names what each row and column stands for: a base, or in hierarchical mode a
    codon (T = ceil(L / 3); a last partial codon is written with its bases only).
    """

    tokens: tuple[str, ...]
    weights: np.ndarray

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[1])

    def select(self, *, layer: int = -1, head: int | None = None) -> np.ndarray:
        """One ``[T, T]`` map: ``layer`` (negative counts from the last), ``head`` or, when None,
        the mean over heads.

        Raises:
            AnalysisError: layer or head out of range.
        """
        if not -self.num_layers <= layer < self.num_layers:
            raise AnalysisError(f"layer {layer} out of range: the model has {self.num_layers} layers "
                                f"(0..{self.num_layers - 1}, or -1 for the last)")
        maps = self.weights[layer]  # [H, T, T]
        if head is None:
            return maps.mean(axis=0)
        if not 0 <= head < self.num_heads:
            raise AnalysisError(f"head {head} out of range: the model has {self.num_heads} heads "
                                f"(0..{self.num_heads - 1})")
        return maps[head]


def token_stride(model: GenomicTransformer) -> int:
    """Bases per attention token: 3 in hierarchical mode (attention over codons), else 1."""
    return CODON if model.config.hierarchical else 1


def _token_labels(sequence: str, stride: int) -> tuple[str, ...]:
    return tuple(sequence[i: i + stride].upper() for i in range(0, len(sequence), stride))


@torch.no_grad()
def attention_maps(model: GenomicTransformer, *, sequence: str, task: str | None = None) -> AttentionMaps:
    """All attention maps of one sequence.

    Args:
        model: the model.
        sequence: one DNA/RNA string.
        task: the head to run (attention comes from the shared backbone, so any head gives the
            same maps); default the model's first.

    Returns:
        :class:`AttentionMaps`.

    Raises:
        AnalysisError: unknown task. SequenceError: a bad sequence.
    """
    task = require_task(model, task or model.tasks[0])
    tokens = pad(tokenize([sequence], max_len=model.config.max_len))
    model.eval()
    attentions = model(tokens, task, return_attention=True).attentions
    weights = torch.stack([a[0] for a in attentions]).double().numpy()  # [layers, H, T, T]
    return AttentionMaps(_token_labels(sequence, token_stride(model)), weights)


def attention_entropy(weights: np.ndarray) -> np.ndarray:
    """Entropy in bits of each query's attention distribution (the seed's information content of
    attention): low means focused on a few keys, log2(T) means spread evenly.

    Args:
        weights: ``[..., T, T]`` maps, rows summing to 1 (zero weights, e.g. on padding, add 0).

    Returns:
        ``[..., T]``: one entropy per query.
    """
    weights = np.asarray(weights, dtype=np.float64)
    logs = np.log2(np.where(weights > 0, weights, 1.0))  # 0 * log 0 taken as 0
    return -(weights * logs).sum(axis=-1)


def attention_received(weights: np.ndarray) -> np.ndarray:
    """Mean attention each key receives over all queries: ``[..., T, T]`` -> ``[..., T]``, summing
    to 1 (the seed's per-position bar chart)."""
    return np.asarray(weights, dtype=np.float64).mean(axis=-2)


def sequence_entropy(sequence: str) -> float:
    """Shannon entropy of a sequence's base composition, in bits per base (0 for a homopolymer,
    2 for equal A, C, G, T). N and ambiguity codes are left out of the counts.

    Raises:
        SequenceError: a bad sequence. AnalysisError: a sequence without any A, C, G or T.
    """
    tokens = encode(sequence)
    counts = np.array([(tokens == t).sum() for t in (A_ID, C_ID, G_ID, T_ID)], dtype=np.float64)
    if counts.sum() == 0:
        raise AnalysisError("sequence holds no A, C, G or T; its base entropy is undefined")
    frequencies = counts[counts > 0] / counts.sum()
    return float(-(frequencies * np.log2(frequencies)).sum())


# ---------------------------------------------------------------- variant alignment


@dataclass(frozen=True)
class Alignment:
    """Positions a reference and an alternative share: ``ref_index[i]`` in the reference is
    ``alt_index[i]`` in the alternative. Bases inside an indel's changed block are in neither."""

    ref_index: np.ndarray
    alt_index: np.ndarray


def _common_prefix(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    return next((i for i in range(limit) if a[i] != b[i]), limit)


def align_variant(ref: str, alt: str, *, stride: int = 1) -> Alignment:
    """Align the tokens of a reference and an alternative sequence.

    Same length (SNVs, multi-base substitutions): every position maps to itself. Different
    lengths (indels): the common prefix maps to itself and the common suffix is shifted by the
    length change; the prefix is taken as long as possible, so an indel in a repeat is placed at
    its rightmost equivalent position (either placement gives the same alignment of the rest).

    Args:
        ref, alt: the two sequences (compared case-insensitively).
        stride: bases per token (3 in hierarchical mode): a token is aligned when all its bases
            map, in order, onto all bases of one token of the other sequence.

    Returns:
        :class:`Alignment` of token indices.
    """
    ref, alt = ref.upper(), alt.upper()
    base_map = np.full(len(ref), -1, dtype=np.int64)  # alt position of each ref base, -1 if none
    if len(ref) == len(alt):
        base_map[:] = np.arange(len(ref))
    else:
        prefix = _common_prefix(ref, alt)
        suffix = min(_common_prefix(ref[::-1], alt[::-1]), min(len(ref), len(alt)) - prefix)
        base_map[:prefix] = np.arange(prefix)
        base_map[len(ref) - suffix:] = np.arange(len(alt) - suffix, len(alt))
    full_tokens = len(ref) // stride  # a last partial token never aligns
    starts = base_map[np.arange(full_tokens) * stride]
    aligned = (starts >= 0) & (starts % stride == 0) & (starts + stride <= len(alt))
    for offset in range(1, stride):
        aligned &= base_map[np.arange(full_tokens) * stride + offset] == starts + offset
    return Alignment(np.flatnonzero(aligned), starts[aligned] // stride)


def attention_change(ref_maps: np.ndarray, alt_maps: np.ndarray, alignment: Alignment) -> float:
    """How much the attention moved between two sequences, in [0, 1].

    For each head, the aligned sub-maps are subtracted; each query row's squared L2 difference is at
    most 2 (two probability distributions), so ``sqrt(mean over queries of ||diff||^2 / 2)`` lies in
    [0, 1]; the result is its mean over heads.

    Args:
        ref_maps, alt_maps: ``[H, T_ref, T_ref]`` and ``[H, T_alt, T_alt]`` (one layer).
        alignment: from :func:`align_variant`.

    Returns:
        The change, or nan when the two sequences share no token.
    """
    ref_index, alt_index = alignment.ref_index, alignment.alt_index
    if ref_index.size == 0:
        return math.nan
    ref_sub = ref_maps[:, ref_index][:, :, ref_index]  # [H, n, n]
    alt_sub = alt_maps[:, alt_index][:, :, alt_index]
    per_query = ((alt_sub - ref_sub) ** 2).sum(axis=-1) / 2.0  # [H, n]
    return float(np.sqrt(per_query.mean(axis=-1)).mean())


# ---------------------------------------------------------------- variant impact


@dataclass(frozen=True)
class Variant:
    """A reference/alternative pair to score; ``task`` picks the head whose probability change is
    the score (None: the head whose probability changes most)."""

    id: str
    ref: str
    alt: str
    task: str | None = None


@dataclass(frozen=True)
class VariantImpact:
    """The score of one variant.

    ``delta_probability``: per task head, the signed change (alt - ref) in the probability of the
    functional class (:func:`functional_probability`); for per-position tasks the change at the
    aligned base where it is largest in absolute value. ``attention_change``: see
    :func:`attention_change` (last layer). ``score``: ``delta_probability[task]``, negative when
    the variant weakens or destroys the element. ``impact``: ``(|score| + attention_change) / 2``.
    ``label``: ``"high"`` when ``impact >= HIGH_IMPACT_THRESHOLD``, else ``"low"``.
    """

    id: str
    task: str
    delta_probability: dict[str, float]
    attention_change: float
    score: float
    impact: float
    label: str


def _probability_change(task: str, ref_prob: np.ndarray, alt_prob: np.ndarray, alignment: Alignment) -> float:
    """Signed change in P(functional) of one pair for one task (see :class:`VariantImpact`)."""
    if not get_task(task).per_position:
        return float(functional_probability(alt_prob) - functional_probability(ref_prob))
    if alignment.ref_index.size == 0:
        return math.nan
    change = (functional_probability(alt_prob[alignment.alt_index])
              - functional_probability(ref_prob[alignment.ref_index]))  # [aligned bases]
    return float(change[np.argmax(np.abs(change))])


def _variant_task(model: GenomicTransformer, variant: Variant, index: int) -> str | None:
    task = getattr(variant, "task", None)
    if task is not None and task not in model.tasks:
        raise AnalysisError(f"variant {index} ({variant.id!r}): unknown task {task!r}; this model has "
                            f"heads for {', '.join(model.tasks)}")
    return task


def _impact(variant_id: str, task: str | None, deltas: dict[str, float], change: float) -> VariantImpact:
    if task is None:  # the head that moved most speaks for the variant
        task = max(deltas, key=lambda t: -1.0 if math.isnan(deltas[t]) else abs(deltas[t]))
    score = deltas[task]
    parts = [abs(score) if not math.isnan(score) else 0.0, change if not math.isnan(change) else 0.0]
    impact = sum(parts) / 2.0
    label = HIGH_IMPACT if impact >= HIGH_IMPACT_THRESHOLD else LOW_IMPACT
    return VariantImpact(variant_id, task, deltas, change, score, impact, label)


@torch.no_grad()
def _score_batch(model: GenomicTransformer, variants: Sequence[Variant], tasks: Sequence[str | None],
                 ref_rows: list[np.ndarray], alt_rows: list[np.ndarray]) -> list[VariantImpact]:
    n, stride = len(variants), token_stride(model)
    tokens = pad(ref_rows + alt_rows)  # [2n, L]: references first, then alternatives
    probabilities, last_layer = {}, None
    for task in model.tasks:
        output = model(tokens, task, return_attention=last_layer is None)
        if last_layer is None:  # the backbone's maps do not depend on the head
            last_layer = output.attentions[-1].double().numpy()  # [2n, H, T, T]
        probabilities[task] = output.logits.float().softmax(dim=-1).double().numpy()
    impacts = []
    for i, variant in enumerate(variants):
        ref_len, alt_len = len(ref_rows[i]), len(alt_rows[i])
        base_alignment = align_variant(variant.ref, variant.alt)
        token_alignment = align_variant(variant.ref, variant.alt, stride=stride)
        deltas = {task: _probability_change(task, prob[i][:ref_len] if prob.ndim == 3 else prob[i],
                                            prob[n + i][:alt_len] if prob.ndim == 3 else prob[n + i],
                                            base_alignment)
                  for task, prob in probabilities.items()}
        ref_tokens, alt_tokens = -(-ref_len // stride), -(-alt_len // stride)
        change = attention_change(last_layer[i][:, :ref_tokens, :ref_tokens],
                                  last_layer[n + i][:, :alt_tokens, :alt_tokens], token_alignment)
        impacts.append(_impact(variant.id, tasks[i], deltas, change))
    return impacts


def score_variants(model: GenomicTransformer, *, variants: Sequence[Variant], batch_size: int = 32) -> list[VariantImpact]:
    """Score reference/alternative pairs (SNVs, substitutions, small indels), in batches.

    Args:
        model: the model.
        variants: :class:`Variant` objects, or anything with ``id``, ``ref``, ``alt`` and an
            optional ``task`` attribute (the generator's ``VariantPair`` works as it is).
        batch_size: pairs per forward pass (each pass runs ``2 * batch_size`` sequences).

    Returns:
        One :class:`VariantImpact` per pair, in order.

    Raises:
        AnalysisError: a pair names a task the model has no head for.
        SequenceError: a bad reference or alternative; the index is ``2 * i`` for pair ``i``'s
            reference and ``2 * i + 1`` for its alternative.
    """
    tasks = [_variant_task(model, v, i) for i, v in enumerate(variants)]
    rows = tokenize([s for v in variants for s in (v.ref, v.alt)], max_len=model.config.max_len)
    model.eval()
    impacts: list[VariantImpact] = []
    for start in range(0, len(variants), batch_size):
        stop = min(start + batch_size, len(variants))
        impacts.extend(_score_batch(model, variants[start:stop], tasks[start:stop],
                                    rows[2 * start: 2 * stop: 2], rows[2 * start + 1: 2 * stop: 2]))
    return impacts


def rank_correlation(*, scores: Sequence[float], effects: Sequence[float]) -> tuple[float, float]:
    """Spearman rank correlation of scores with planted effects, and its two-sided p-value.

    Returns:
        ``(rho, p)``; both nan when fewer than 3 pairs or when either side is constant.
    """
    scores, effects = np.asarray(scores, dtype=float), np.asarray(effects, dtype=float)
    keep = np.isfinite(scores) & np.isfinite(effects)
    scores, effects = scores[keep], effects[keep]
    if scores.size < 3 or np.ptp(scores) == 0 or np.ptp(effects) == 0:
        return math.nan, math.nan
    result = spearmanr(scores, effects)
    return float(result.statistic), float(result.pvalue)


def evaluate_variant_effects(model: GenomicTransformer, *, pairs: Sequence, batch_size: int = 32) -> dict:
    """Score generated variant pairs and rank-correlate the scores with the planted effects.

    Args:
        model: the model; pairs whose task it has no head for are left out.
        pairs: the generator's ``VariantPair`` objects (``id``, ``task``, ``ref``, ``alt``, ``effect``).
        batch_size: as in :func:`score_variants`.

    Returns:
        ``{"spearman", "p_value", "n", "impact_spearman", "by_task": {task: {"spearman", "p_value",
        "n"}}}``: ``spearman`` correlates the signed score with the signed effect;
        ``impact_spearman`` the unsigned impact with the effect's absolute size.

    Raises:
        AnalysisError: no pair has a task the model can score.
    """
    usable = [p for p in pairs if p.task in model.tasks]
    if not usable:
        raise AnalysisError(f"no variant pair is of a task this model has a head for ({', '.join(model.tasks)})")
    impacts = score_variants(model, variants=usable, batch_size=batch_size)
    scores = np.array([i.score for i in impacts])
    effects = np.array([p.effect for p in usable])
    rho, p_value = rank_correlation(scores=scores, effects=effects)
    impact_rho, _ = rank_correlation(scores=[i.impact for i in impacts], effects=np.abs(effects))
    by_task = {}
    for task in sorted({p.task for p in usable}):
        mine = np.array([p.task == task for p in usable])
        task_rho, task_p = rank_correlation(scores=scores[mine], effects=effects[mine])
        by_task[task] = {"spearman": task_rho, "p_value": task_p, "n": int(mine.sum())}
    return {"spearman": rho, "p_value": p_value, "n": len(usable), "impact_spearman": impact_rho,
            "by_task": by_task}
