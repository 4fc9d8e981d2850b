"""Linear k-mer paths: the classic genomic features inside the model, beside each task head.

Under DP-SGD every trained coordinate pays for noise, and with a few thousand records per site a
linear model on hand-made features beats end-to-end training (Tramèr & Boneh 2021; here the DP
k-mer baseline beat the federated transformer, bench/results/dp_recipe.md). ``model.kmer_linear: k``
gives every head a "wide" linear path on those features, added to the transformer's ("deep")
logits, so the model starts where the k-mer baseline ends and the backbone learns the rest:

* sequence tasks: k-mer frequencies of lengths 1..k as enrichment over a uniform background
  (``f·4^j − 1``), the DP k-mer baseline's features (``4 + 16 + … + 4^k`` inputs); with
  ``model.kmer_both_strands`` each k-mer is counted together with its reverse complement, one input
  per pair: about half the inputs, for signals that sit on either strand (TF sites in enhancers);
  with ``model.kmer_norm`` each record's features are scaled to a fixed L2 norm (DP clipping, below);
* per-position tasks: a convolution over the one-hot mono- and dinucleotides of a window around
  each base (a weighted-degree model with k ≤ 2, the DP splice baseline);
* ``model.codon_frames: true`` adds, beside every sequence head, a linear model on the codon usage of
  each forward reading frame, scored in the best frame (``logsumexp`` over the three): what gene
  finders read (in-frame codon statistics, stop codons), which plain k-mer counts mix across frames.

Both are computed from the tokens inside ``forward`` (no parameters, nothing to ship) and feed only
nn.Linear / nn.Conv1d, which Opacus has per-sample gradient samplers for. Their weights start at
zero, so a fresh path changes nothing until training moves it.

Under DP-SGD a record's gradient is clipped to norm C as a whole. The raw enrichment of a 100-200 bp
record has norm 20-130 (k = 4-5), so the path's gradient ``(p - y) * x`` is far above C until the
record is fit to within a few per cent: every record is clipped at full length, the path takes nearly
all of the clipped gradient, and the model grows overconfident. Scaled to a norm near C
(``model.kmer_norm``) the path's gradient fades as a record is fit and the network gets its share.

Which of the two wins depends on the steps a federation takes (bench/results/dp_recipe.md): with few
(the demo's ~50 per institution) the network learns little and the fast raw path must carry the
head; with many (~470 at 5,000 records per site) the network learns most of it, if the path lets it.
``model.kmer_logit_bound: b`` serves both: the raw path's logits pass through ``b·tanh(z / b)``, so
it learns at the raw path's speed while a record's path margin is small, and once the path is
confident about a record its gradient fades and the record's clipped gradient goes to the network.
The bound also caps how far the noise DP adds to the path's weights can move a prediction.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.tokenizer import A_ID, C_ID, G_ID, T_ID, VOCAB_SIZE

MAX_KMER = 6
MAX_KMER_NORM = 1000.0  # far above any useful scale (raw features: 20-130); keeps a config's value sane
MAX_KMER_LOGIT_BOUND = 100.0  # tanh(z / 100) is z for any logit a path reaches: a larger bound means nothing
N_CODE = 4  # bases are coded A0 C1 G2 T3; N, padding, mask and cls are 4 (no base)
# A per-position window reaches 25 bases upstream of a base (the acceptor matrix's 24 bases before
# its anchor, plus one) and 10 downstream (the donor's 6 after its anchor, plus a margin): both splice
# signals fit at every base. The splice baselines use the same reach.
WINDOW_LEFT = 25
WINDOW_RIGHT = 10


def _base_codes(tokens: torch.Tensor) -> torch.Tensor:
    table = torch.full((VOCAB_SIZE,), N_CODE, dtype=torch.long, device=tokens.device)
    table[torch.tensor([A_ID, C_ID, G_ID, T_ID], device=tokens.device)] = torch.arange(4, device=tokens.device)
    return table[tokens]  # [B, L]


@functools.lru_cache(maxsize=MAX_KMER)
def canonical_kmers(j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Of the ``4^j`` j-mers (index = the bases A0 C1 G2 T3 read as a base-4 number): the canonical
    ones (index ≤ its reverse complement's), ascending, and each one's reverse complement. A
    palindrome (even j only, e.g. ACGT) is its own partner."""
    index = torch.arange(4 ** j)
    reverse = torch.zeros_like(index)
    for position in range(j):  # base at ``position`` (from the right) -> complement at the mirror place
        digit = (index // 4 ** position) % 4
        reverse += (3 - digit) * 4 ** (j - 1 - position)
    canonical = index[index <= reverse]
    return canonical, reverse[canonical]


def kmer_enrichment(tokens: torch.Tensor, k: int, *, both_strands: bool = False) -> torch.Tensor:
    """``tokens [B, L]`` -> ``[B, kmer_feature_count(k, both_strands)]`` k-mer frequencies of lengths
    1..k, each length's block as enrichment over uniform (``f·4^j − 1``). A k-mer holding a non-base
    (N, padding, mask) is counted nowhere; a sequence with no k-mer of some length gets −1 there.
    ``both_strands``: one column per canonical k-mer, the mean frequency of it and its reverse
    complement (what the same sequence read on the other strand would give), so the features are the
    same for a sequence and its reverse complement."""
    codes = _base_codes(tokens)
    is_base = codes < N_CODE
    digit = torch.where(is_base, codes, torch.zeros_like(codes))
    index, valid = digit, is_base
    blocks = []
    for j in range(1, k + 1):
        if j > 1:  # extend each (j-1)-mer by the base after it
            index = index[:, :-1] * 4 + digit[:, j - 1:]
            valid = valid[:, :-1] & is_base[:, j - 1:]
        counts = torch.zeros(tokens.shape[0], 4 ** j, device=tokens.device)
        if index.shape[1]:
            counts.scatter_add_(1, index, valid.to(counts.dtype))
        frequency = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)
        if both_strands:
            canonical, partner = (t.to(tokens.device) for t in canonical_kmers(j))
            frequency = (frequency[:, canonical] + frequency[:, partner]) / 2
        blocks.append(frequency * 4.0 ** j - 1.0)
    return torch.cat(blocks, dim=1)


def kmer_feature_count(k: int, both_strands: bool = False) -> int:
    if both_strands:  # pairs, plus the palindromes of even lengths (their own pair)
        return sum((4 ** j + (4 ** (j // 2) if j % 2 == 0 else 0)) // 2 for j in range(1, k + 1))
    return sum(4 ** j for j in range(1, k + 1))


class SequenceKmerPath(nn.Module):
    """Class logits ``[B, C]`` from a linear model on the record's k-mer enrichment (``both_strands``:
    on canonical k-mers, see :func:`kmer_enrichment`); ``norm > 0``: each record's feature vector
    scaled to that L2 norm (``model.kmer_norm``), so its per-record gradient is ``|p - y| * norm``
    at most, whatever k and the window's length; ``logit_bound > 0``: each class logit is
    ``logit_bound·tanh(z / logit_bound)`` (``model.kmer_logit_bound``), within ±``logit_bound``."""

    def __init__(self, k: int, num_classes: int, both_strands: bool = False, *, norm: float = 0.0,
                 logit_bound: float = 0.0):
        super().__init__()
        if not 1 <= k <= MAX_KMER:
            raise ValueError(f"k-mer path: expected 1 <= k <= {MAX_KMER}, got {k}")
        if not 0.0 <= norm <= MAX_KMER_NORM:
            raise ValueError(f"k-mer path: expected 0 <= norm <= {MAX_KMER_NORM:g}, got {norm}")
        if not 0.0 <= logit_bound <= MAX_KMER_LOGIT_BOUND:
            raise ValueError(f"k-mer path: expected 0 <= logit_bound <= {MAX_KMER_LOGIT_BOUND:g}, got {logit_bound}")
        self.k, self.both_strands, self.norm, self.logit_bound = k, both_strands, norm, logit_bound
        self.linear = nn.Linear(kmer_feature_count(k, both_strands), num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        features = kmer_enrichment(tokens, self.k, both_strands=self.both_strands)
        if self.norm:  # a record with no k-mer at all (all N) has the -1 vector: never zero
            features = features * (self.norm / features.norm(dim=1, keepdim=True).clamp(min=1e-6))
        logits = self.linear(features)
        # Opacus computes nn.Linear's per-sample gradients from what flows back into it, so the tanh
        # after it needs no sampler of its own.
        return self.logit_bound * torch.tanh(logits / self.logit_bound) if self.logit_bound else logits


def frame_codon_usage(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens [B, L]`` -> ``[B, 3, 64]``: for each forward reading frame f (codons starting at
    bases f, f+3, …) its codon frequencies as enrichment over uniform (``f·64 − 1``). A codon holding
    a non-base is counted nowhere, so leading N's or padding shift the frames but lose no codon."""
    codes = _base_codes(tokens)
    is_base = codes < N_CODE
    digit = torch.where(is_base, codes, torch.zeros_like(codes))
    index = digit[:, :-2] * 16 + digit[:, 1:-1] * 4 + digit[:, 2:]  # the codon starting at each base
    valid = (is_base[:, :-2] & is_base[:, 1:-1] & is_base[:, 2:]).float()
    frames = []
    for frame in range(3):
        counts = torch.zeros(tokens.shape[0], 64, device=tokens.device)
        if index.shape[1] > frame:
            counts.scatter_add_(1, index[:, frame::3], valid[:, frame::3])
        frames.append(counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0) * 64.0 - 1.0)
    return torch.stack(frames, dim=1)


# Under DP-SGD the path's 64 × C weights compete with the whole model for the clipping norm, and the
# noise per coordinate is fixed: larger inputs give them more signal per unit of noise. A DP logistic
# model on k-mer + codon paths (one site's 5,000 real coding windows, ε = 8) reached test MCC 0.81 with
# the enrichment as is, 0.86 with it times 4 or 8, 0.85 times 16 (bench/results/dp_recipe.md).
CODON_FEATURE_SCALE = 4.0


class FrameCodonPath(nn.Module):
    """Class logits ``[B, C]`` from in-frame codon usage: one linear model shared by the three
    frames, its per-class scores combined with ``logsumexp`` over frames (a soft "best frame", since
    where a window starts in the reading frame is unknown). Records are read on their own strand, as
    labelled genomic windows are; the reverse strand's frames are not scored. A zero-initialised path
    adds exactly nothing (``logsumexp`` of three zeros minus ``log 3``)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(64, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        usage = frame_codon_usage(tokens) * CODON_FEATURE_SCALE
        return torch.logsumexp(self.linear(usage), dim=1) - math.log(3.0)


class WindowKmerPath(nn.Module):
    """Per-base logits ``[B, L, C]`` from the one-hot mono- and dinucleotides of a window around
    each base (``left`` before, ``right`` after); past the ends and at non-bases: no base."""

    def __init__(self, num_classes: int, left: int = WINDOW_LEFT, right: int = WINDOW_RIGHT, *,
                 zero_init: bool = True):
        super().__init__()
        self.left, self.right = left, right
        self.conv = nn.Conv1d(4 + 16, num_classes, kernel_size=left + 1 + right)
        if zero_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.from_codes(_base_codes(tokens))

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The same from base codes (A0 C1 G2 T3, anything else 4) ``[B, L]``."""
        codes = codes.clamp(max=N_CODE)
        mono = F.one_hot(codes, N_CODE + 1)[..., :N_CODE].float()  # [B, L, 4]
        after = torch.cat([codes[:, 1:], torch.full_like(codes[:, :1], N_CODE)], dim=1)
        pair = torch.where((codes < N_CODE) & (after < N_CODE), codes * 4 + after, torch.full_like(codes, 16))
        di = F.one_hot(pair, 17)[..., :16].float()  # [B, L, 16]
        x = F.pad(torch.cat([mono, di], dim=-1).transpose(1, 2), (self.left, self.right))  # [B, 20, L + w - 1]
        return self.conv(x).transpose(1, 2)  # [B, L, C]
