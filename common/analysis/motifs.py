"""Motif discovery from attention: which k-mers a model attends to across a set of sequences, how
enriched they are against every k-mer of those sequences, and which known motif each resembles.

The seed article's idea (a motif is what attention keeps returning to) made concrete:

1. Per base, the attention it receives (:func:`attention_scores`): last layer, mean over heads
   and over real queries; in hierarchical mode a codon's share is split over its three bases.
2. Per sequence, the ``windows_per_sequence`` highest-scoring non-overlapping k-mer windows.
3. Enrichment of each attended k-mer (reverse complements counted together) against all k-mer
   windows of the same sequences: log2 odds with a pseudocount, and a one-sided binomial test,
   Bonferroni-corrected over the k-mers tested.
4. A position frequency matrix from the attended windows within one mismatch of the k-mer, and
   the closest reference matrix by mean Pearson correlation of columns over every offset and
   both strands (the column similarity TOMTOM uses).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binom

from common.analysis.scoring import AnalysisError, pad, token_stride, tokenize
from common.model import GenomicTransformer
from common.synthetic.reference import BASES, Motif, searchable_motifs

DEFAULT_K = 6
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


@dataclass(frozen=True)
class MotifMatch:
    """The closest known motif: its ID and name, the mean column correlation (-1..1), the offset of
    the discovered motif's first column in the known matrix (negative: the known matrix starts
    inside the discovered one), and the strand of the known matrix that matched."""

    motif_id: str
    name: str
    similarity: float
    offset: int
    strand: str


@dataclass(frozen=True)
class DiscoveredMotif:
    """One attended k-mer (reverse complements counted together).

    ``attended``: its count among the attended windows; ``background``: among all windows.
    ``log2_enrichment``: log2 odds of the attended rate over the background rate (pseudocounts).
    ``p_value``: one-sided binomial test, Bonferroni-corrected. ``matrix``: ``[4, k]`` base
    probabilities (rows A, C, G, T) of the attended windows within one mismatch.
    """

    kmer: str
    attended: int
    background: int
    log2_enrichment: float
    p_value: float
    matrix: np.ndarray = field(repr=False)
    match: MotifMatch | None


def reverse_complement(kmer: str) -> str:
    return kmer.translate(_COMPLEMENT)[::-1]


def canonical(kmer: str) -> str:
    """The lexicographically smaller of a k-mer and its reverse complement."""
    return min(kmer, reverse_complement(kmer))


# ---------------------------------------------------------------- attention per base


def _check_layer(model: GenomicTransformer, layer: int) -> None:
    layers = model.config.n_layers
    if not -layers <= layer < layers:
        raise AnalysisError(f"layer {layer} out of range: the model has {layers} layers (0..{layers - 1}, "
                            f"or -1 for the last)")


@torch.no_grad()
def attention_scores(model: GenomicTransformer, *, sequences: Sequence[str], layer: int = -1,
                     batch_size: int = 32) -> list[np.ndarray]:
    """Attention received by each base.

    Args:
        model: the model.
        sequences: DNA strings.
        layer: which layer's maps (negative counts from the last).
        batch_size: sequences per forward pass.

    Returns:
        One ``float64 [L]`` array per sequence, summing to 1: the mean over heads and real queries
        of the attention each key receives (a codon's share split evenly over its bases).

    Raises:
        AnalysisError: layer out of range. SequenceError: a bad sequence.
    """
    _check_layer(model, layer)
    rows = tokenize(sequences, max_len=model.config.max_len)
    stride, task = token_stride(model), model.tasks[0]  # the maps come from the backbone: any head
    model.eval()
    scores: list[np.ndarray] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start: start + batch_size]
        maps = model(pad(batch), task, return_attention=True).attentions[layer].mean(dim=1)  # [B, T, T]
        for i, tokens in enumerate(batch):
            n_tokens = -(-len(tokens) // stride)
            received = maps[i, :n_tokens, :n_tokens].double().mean(dim=0).numpy()  # [n_tokens]
            scores.append(_spread_over_bases(received, len(tokens), stride))
    return scores


def _spread_over_bases(token_scores: np.ndarray, length: int, stride: int) -> np.ndarray:
    if stride == 1:
        return token_scores
    bases_per_token = np.full(token_scores.size, stride)
    bases_per_token[-1] = length - stride * (token_scores.size - 1)  # a last partial codon
    return np.repeat(token_scores / bases_per_token, bases_per_token)


# ---------------------------------------------------------------- attended windows and enrichment


def top_windows(scores: np.ndarray, *, k: int, count: int, sequence: str) -> list[int]:
    """Starts of the ``count`` highest-scoring non-overlapping k-base windows (window score: the
    sum of its bases' scores); windows holding anything but A, C, G, T are skipped."""
    if len(sequence) < k:
        return []
    window_scores = np.convolve(np.asarray(scores, dtype=float), np.ones(k), mode="valid")  # [L - k + 1]
    valid = np.array([set(sequence[j: j + k]) <= set(BASES) for j in range(window_scores.size)])
    chosen: list[int] = []
    for j in np.argsort(-window_scores, kind="stable"):
        if len(chosen) == count:
            break
        if valid[j] and all(abs(int(j) - c) >= k for c in chosen):
            chosen.append(int(j))
    return chosen


def _all_kmers(sequences: Sequence[str], k: int) -> Counter:
    counts: Counter = Counter()
    for seq in sequences:
        for j in range(len(seq) - k + 1):
            kmer = seq[j: j + k]
            if set(kmer) <= set(BASES):
                counts[canonical(kmer)] += 1
    return counts


@dataclass(frozen=True)
class _Enrichment:
    kmer: str
    attended: int
    background: int
    log2_enrichment: float
    p_value: float


def _enrichment(attended: Counter, background: Counter, *, min_count: int, pseudocount: float) -> list[_Enrichment]:
    """Every attended k-mer seen ``min_count`` times or more, most significant first."""
    n_attended, n_background = sum(attended.values()), sum(background.values())
    vocabulary = len(background)  # distinct k-mers present: the pseudocount's denominator
    tested = [kmer for kmer, count in attended.items() if count >= min_count]
    results = []
    for kmer in tested:
        a, b = attended[kmer], background[kmer]
        attended_rate = (a + pseudocount) / (n_attended + pseudocount * vocabulary)
        background_rate = (b + pseudocount) / (n_background + pseudocount * vocabulary)
        p_value = float(binom.sf(a - 1, n_attended, b / n_background))
        results.append(_Enrichment(kmer, a, b, float(np.log2(attended_rate / background_rate)),
                                   min(1.0, p_value * len(tested))))
    return sorted(results, key=lambda e: (e.p_value, -e.log2_enrichment, e.kmer))


def _overlaps(a: str, b: str, *, max_shift: int) -> bool:
    """Whether ``a`` equals ``b`` (or its reverse complement) shifted by at most ``max_shift`` bases
    on their overlap: the same motif seen from a neighbouring window."""
    for other in (b, reverse_complement(b)):
        for shift in range(-max_shift, max_shift + 1):
            left, right = (a[shift:], other) if shift >= 0 else (a, other[-shift:])
            overlap = min(len(left), len(right))
            if overlap and left[:overlap] == right[:overlap]:
                return True
    return False


def _window_matrix(kmer: str, windows: Sequence[str], pseudocount: float) -> np.ndarray:
    """``[4, k]`` probabilities of the windows within one mismatch of ``kmer``, read on its strand."""
    counts = np.full((4, len(kmer)), pseudocount)
    for window in windows:
        for oriented in (window, reverse_complement(window)):
            if sum(x != y for x, y in zip(oriented, kmer, strict=True)) <= 1:
                counts[[BASES.index(base) for base in oriented], np.arange(len(kmer))] += 1
                break  # a palindrome-like window counts once
    return counts / counts.sum(axis=0)


# ---------------------------------------------------------------- comparison with known motifs


def _column_correlation(query: np.ndarray, target: np.ndarray) -> float:
    """Mean Pearson correlation of matching columns of two ``[4, w]`` matrices; a column with no
    variance (uniform) correlates 0 with anything."""
    q = query - query.mean(axis=0)
    t = target - target.mean(axis=0)
    norms = np.sqrt((q ** 2).sum(axis=0) * (t ** 2).sum(axis=0))
    products = (q * t).sum(axis=0)
    return float(np.where(norms > 0, products / np.where(norms > 0, norms, 1.0), 0.0).mean())


def _best_offset(query: np.ndarray, target: np.ndarray) -> tuple[float, int]:
    """Best mean column correlation over every offset where the shorter matrix lies wholly inside
    the longer; the offset is of the query's first column in the target."""
    k, w = query.shape[1], target.shape[1]
    if k <= w:
        options = [(_column_correlation(query, target[:, o: o + k]), o) for o in range(w - k + 1)]
    else:
        options = [(_column_correlation(query[:, o: o + w], target), -o) for o in range(k - w + 1)]
    return max(options)


def closest_motif(matrix: np.ndarray, *, motifs: Sequence[Motif] | None = None) -> MotifMatch | None:
    """The known motif most similar to ``matrix``, on either strand.

    Args:
        matrix: ``[4, k]`` probabilities, rows A, C, G, T.
        motifs: candidates (default: the measured matrices of :mod:`common.synthetic.reference`).

    Returns:
        The best :class:`MotifMatch`, or None when there are no candidates.
    """
    best: MotifMatch | None = None
    for motif in searchable_motifs() if motifs is None else motifs:
        for strand, target in (("+", motif.probabilities), ("-", motif.probabilities[::-1, ::-1])):
            similarity, offset = _best_offset(matrix, target)
            if best is None or similarity > best.similarity:
                best = MotifMatch(motif.id, motif.name, similarity, offset, strand)
    return best


# ---------------------------------------------------------------- discovery


def discover_motifs(*, sequences: Sequence[str], scores: Sequence[np.ndarray], k: int = DEFAULT_K,
                    windows_per_sequence: int = 1, top: int = 10, min_count: int = 3,
                    pseudocount: float = 0.5, motifs: Sequence[Motif] | None = None) -> list[DiscoveredMotif]:
    """The most attended k-mers of a set of sequences, their enrichment and closest known motif.

    Args:
        sequences: DNA strings (upper or lower case).
        scores: one per-base score array per sequence (e.g. :func:`attention_scores`).
        k: k-mer length (3..12).
        windows_per_sequence: attended windows taken from each sequence.
        top: most motifs returned; a k-mer that is a shifted (<= 2 bases) or reverse-complement view
            of one already reported is folded into it.
        min_count: fewest attended windows a k-mer needs to be tested.
        pseudocount: added to every k-mer's count in the log-odds.
        motifs: reference matrices to match against (default :func:`reference.searchable_motifs`).

    Returns:
        :class:`DiscoveredMotif` list, most significant first.

    Raises:
        AnalysisError: mismatched inputs or parameters out of range.
    """
    _check_discovery_arguments(sequences, scores, k=k, windows_per_sequence=windows_per_sequence, top=top)
    upper = [s.upper() for s in sequences]
    windows = [seq[j: j + k] for seq, score in zip(upper, scores, strict=True)
               for j in top_windows(score, k=k, count=windows_per_sequence, sequence=seq)]
    attended = Counter(canonical(w) for w in windows)
    kept: list[DiscoveredMotif] = []
    for entry in _enrichment(attended, _all_kmers(upper, k), min_count=min_count, pseudocount=pseudocount):
        if len(kept) == top:
            break
        if any(_overlaps(entry.kmer, other.kmer, max_shift=2) for other in kept):
            continue
        matrix = _window_matrix(entry.kmer, windows, pseudocount=0.1)
        kept.append(DiscoveredMotif(entry.kmer, entry.attended, entry.background, entry.log2_enrichment,
                                    entry.p_value, matrix, closest_motif(matrix, motifs=motifs)))
    return kept


def _check_discovery_arguments(sequences, scores, *, k: int, windows_per_sequence: int, top: int) -> None:
    if len(sequences) != len(scores):
        raise AnalysisError(f"{len(sequences)} sequences but {len(scores)} score arrays; expected one each")
    for i, (seq, score) in enumerate(zip(sequences, scores, strict=True)):
        if len(seq) != len(score):
            raise AnalysisError(f"sequence {i}: {len(seq)} bases but {len(score)} scores; expected one per base")
    if not 3 <= k <= 12:
        raise AnalysisError(f"k must lie in 3..12, got {k}")
    if windows_per_sequence < 1 or top < 1:
        raise AnalysisError(f"windows_per_sequence and top must be positive, got {windows_per_sequence} and {top}")


def discover_from_attention(model: GenomicTransformer, *, sequences: Sequence[str], k: int = DEFAULT_K,
                            layer: int = -1, windows_per_sequence: int = 1, top: int = 10,
                            min_count: int = 3) -> list[DiscoveredMotif]:
    """:func:`discover_motifs` on the attention the model gives ``sequences``
    (:func:`attention_scores` of ``layer``); arguments and errors as those two functions'."""
    scores = attention_scores(model, sequences=sequences, layer=layer)
    return discover_motifs(sequences=sequences, scores=scores, k=k, windows_per_sequence=windows_per_sequence,
                           top=top, min_count=min_count)
