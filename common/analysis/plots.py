"""Figures of the analysis commands, drawn with matplotlib's Agg backend (files, never a window).

The seed article's ``visualize_genomic_attention`` done right: any layer and head (or their mean),
tokens (bases, or codons in hierarchical mode) on both axes of the heatmap, a bar chart of the
attention each position receives with its base under it, and each query's attention entropy;
``plt.show()`` replaced by a saved file so it runs on a server. Motifs get sequence-logo-style
plots: letters stacked by probability and scaled by information content.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the commands run on servers without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.patches import PathPatch  # noqa: E402
from matplotlib.textpath import TextPath  # noqa: E402
from matplotlib.transforms import Affine2D  # noqa: E402

from common.analysis.motifs import DiscoveredMotif  # noqa: E402
from common.analysis.scoring import AttentionMaps, attention_entropy, attention_received  # noqa: E402
from common.synthetic.reference import BASES, get_motif  # noqa: E402

BASE_COLOURS = {"A": "#2ca02c", "C": "#1f77b4", "G": "#ff7f0e", "T": "#d62728"}
MAX_TICK_LABELS = 80  # beyond this many tokens, label every n-th so the labels stay legible
_LETTER_FONT = FontProperties(family="DejaVu Sans", weight="bold")


def _tick_step(n_tokens: int) -> int:
    return max(1, -(-n_tokens // MAX_TICK_LABELS))


def plot_attention(maps: AttentionMaps, *, path: str | Path, layer: int = -1, head: int | None = None,
                   title: str = "") -> Path:
    """Heatmap of one attention map plus the attention each position receives and each query's
    entropy.

    Args:
        maps: from :func:`common.analysis.scoring.attention_maps`.
        path: the image file to write (its suffix picks the format, e.g. ``.png``).
        layer, head: as :meth:`AttentionMaps.select` (head None: mean over heads).
        title: a line above the figure.

    Returns:
        ``path``.

    Raises:
        AnalysisError: layer or head out of range.
    """
    weights = maps.select(layer=layer, head=head)  # [T, T]
    tokens, n = maps.tokens, len(maps.tokens)
    step = _tick_step(n)
    width = min(4 + 0.18 * n, 40)
    figure, (heat, bars, entropy) = plt.subplots(
        3, 1, figsize=(width, width * 0.9 + 4), gridspec_kw={"height_ratios": [6, 1.4, 1]})
    image = heat.imshow(weights, cmap="Blues", aspect="equal", interpolation="nearest")
    ticks = np.arange(0, n, step)
    for set_ticks, set_labels in ((heat.set_xticks, heat.set_xticklabels), (heat.set_yticks, heat.set_yticklabels)):
        set_ticks(ticks)
        set_labels([tokens[i] for i in ticks], fontsize=7, family="monospace")
    heat.set_xlabel("key (attended) position")
    heat.set_ylabel("query position")
    head_text = "mean over heads" if head is None else f"head {head}"
    layer_number = layer % maps.num_layers
    heat.set_title(f"{title}\nlayer {layer_number}, {head_text}".strip())
    figure.colorbar(image, ax=heat, fraction=0.03, label="attention weight")
    _attention_bars(bars, attention_received(weights), tokens, ticks)
    entropy.plot(np.arange(n), attention_entropy(weights), color="#555555", marker=".")
    entropy.axhline(np.log2(n), color="#bbbbbb", linestyle="--", label=f"uniform: log2({n}) bits")
    entropy.set_xlim(-0.5, n - 0.5)
    entropy.set_xticks(ticks)
    entropy.set_xticklabels([tokens[i] for i in ticks], fontsize=7, family="monospace")
    entropy.set_ylabel("entropy (bits)")
    entropy.set_title("entropy of each query's attention (lower: more focused)", fontsize=9)
    entropy.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _attention_bars(ax, received: np.ndarray, tokens: Sequence[str], ticks: np.ndarray) -> None:
    colours = [BASE_COLOURS.get(t[:1], "#999999") for t in tokens]
    ax.bar(np.arange(len(tokens)), received, color=colours, width=0.85)
    ax.axhline(1.0 / len(tokens), color="#bbbbbb", linestyle="--", linewidth=1)  # what even attention gives
    ax.set_xticks(ticks)
    ax.set_xticklabels([tokens[i] for i in ticks], fontsize=7, family="monospace")
    ax.set_xlim(-0.5, len(tokens) - 0.5)
    ax.set_ylabel("attention\nreceived")
    ax.set_title("mean attention each position receives (dashed: uniform)", fontsize=9)


# ---------------------------------------------------------------- sequence logos


def information_content(matrix: np.ndarray) -> np.ndarray:
    """Bits per column of a ``[4, w]`` probability matrix: ``2 - H(column)``."""
    safe = np.where(matrix > 0, matrix, 1.0)
    return 2.0 + (matrix * np.log2(safe)).sum(axis=0)


def _draw_letter(ax, letter: str, x: float, y: float, height: float) -> None:
    path = TextPath((0, 0), letter, size=1, prop=_LETTER_FONT)
    box = path.get_extents()
    transform = (Affine2D().translate(-box.x0, -box.y0)
                 .scale(0.9 / box.width, height / box.height).translate(x + 0.05, y))
    ax.add_patch(PathPatch(transform.transform_path(path), color=BASE_COLOURS[letter], linewidth=0))


def draw_logo(ax, matrix: np.ndarray, *, title: str = "") -> None:
    """A sequence logo of a ``[4, w]`` probability matrix on ``ax``: at each column the letters are
    stacked from least to most probable, each as tall as its probability times the column's bits."""
    bits = information_content(matrix)
    for column in range(matrix.shape[1]):
        y = 0.0
        for row in np.argsort(matrix[:, column]):
            height = float(matrix[row, column] * bits[column])
            if height > 1e-3:
                _draw_letter(ax, BASES[row], column, y, height)
                y += height
    ax.set_xlim(0, matrix.shape[1])
    ax.set_ylim(0, 2)
    ax.set_xticks(np.arange(matrix.shape[1]) + 0.5)
    ax.set_xticklabels(np.arange(1, matrix.shape[1] + 1), fontsize=7)
    ax.set_ylabel("bits")
    ax.set_title(title, fontsize=9)


def plot_motif_logos(motifs: Sequence[DiscoveredMotif], *, path: str | Path) -> Path:
    """One row per discovered motif: its logo, and beside it the logo of its closest known motif
    on the strand that matched.

    Returns:
        ``path``.

    Raises:
        ValueError: no motifs to draw.
    """
    if not motifs:
        raise ValueError("no motifs to draw")
    figure, axes = plt.subplots(len(motifs), 2, figsize=(11, 2.2 * len(motifs)), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 2]})
    for (found, known), motif in zip(axes, motifs, strict=True):
        draw_logo(found, motif.matrix, title=f"{motif.kmer}: {motif.attended} attended, "
                                             f"log2 enrichment {motif.log2_enrichment:.2f}")
        if motif.match is None:
            known.set_axis_off()
            continue
        reference = get_motif(motif.match.motif_id).probabilities
        if motif.match.strand == "-":
            reference = reference[::-1, ::-1]  # reverse complement: rows A C G T -> T G C A
        draw_logo(known, reference, title=f"closest: {motif.match.motif_id} {motif.match.name} "
                                          f"({motif.match.strand} strand, offset {motif.match.offset}, "
                                          f"r = {motif.match.similarity:.2f})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
