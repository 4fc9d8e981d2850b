"""Classic baselines the model is measured against, on scikit-learn; scored by :mod:`common.metrics`.

The seed article compares its transformer with PWM + SVM, MaxEntScan, CPAT and gkm-SVM. Here, two
families that need no training data beyond ours and run in seconds on one core:

* ``kmer``: k-mer frequencies (lengths 1..k) into a logistic regression, for sequence tasks
  (the spectrum-kernel idea behind gkm-SVM and CPAT's hexamer score); for splice sites, k-mers
  at each offset of a window around every base (the explicit feature map of the weighted-degree
  kernel used for splice-site recognition) into a multinomial logistic regression.
* ``pwm``: JASPAR position weight matrices scanned as log-odds (promoter, enhancer), or the human
  donor/acceptor matrices scored at every base (splice, MaxEntScan's setting), into a logistic
  regression. Coding potential has no motif to scan, so ``pwm`` does not apply to it.

Every featuriser is a scikit-learn transformer, so each baseline is one ``Pipeline``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from common.data.dataset import GenomicDataset
from common.kmer_paths import N_CODE, WINDOW_LEFT, WINDOW_RIGHT
from common.metrics import task_metrics
from common.synthetic import reference
from common.tasks import TASK_NAMES, TaskSpec, get_task
from common.tokenizer import encode

KMER = "kmer"
PWM = "pwm"
METHODS: tuple[str, ...] = (KMER, PWM)
MAX_K = 6
# Sequence tasks: 1,364 features (lengths 1..5), about 2 s for 3,000 x 200 bp on one core; on our
# generated promoter, coding and enhancer sets 6 scored lower (more weights than examples) and ran slower.
DEFAULT_K = 5
SPLICE_DEFAULT_K = 3  # per base: 2,880 features; 6 would give 150,000 with little gain, 3x slower

_CODE_OF_TOKEN = np.array([N_CODE, 0, 1, 2, 3, N_CODE, N_CODE, N_CODE], dtype=np.int8)  # by token id

# Where the labelled base sits in each splice matrix: the last exon base of a donor, the last
# intron base (the G of AG) of an acceptor.
DONOR_ANCHOR = reference.DONOR_EXON_BASES - 1
ACCEPTOR_ANCHOR = reference.ACCEPTOR_INTRON_BASES - 1
# Splice windows: the same reach as the model's per-position k-mer path (common/kmer_paths.py).
SPLICE_LEFT, SPLICE_RIGHT = WINDOW_LEFT, WINDOW_RIGHT
NEITHER_PER_SITE = 5  # "neither" bases kept per true site when fitting the splice models


class BaselineError(ValueError):
    """A baseline asked for something it cannot do: an unknown method, one that does not apply to
    the task, a k out of range, or datasets of another task."""


# ---------------------------------------------------------------- base codes and k-mer indices


def base_codes(sequence: str) -> np.ndarray:
    """``int8`` codes of one sequence: A0 C1 G2 T3, N (and any ambiguity code) 4."""
    return _CODE_OF_TOKEN[encode(sequence)]


def _join(codes: Sequence[np.ndarray], gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate code arrays with ``gap`` N's before, between and after them.

    Returns ``(joined, starts)``: windows of up to ``gap + 1`` bases never see two sequences at once.
    """
    lengths = np.array([len(c) for c in codes], dtype=np.int64)
    starts = gap + np.concatenate([[0], np.cumsum(lengths + gap)[:-1]])
    joined = np.full(int(lengths.sum() + gap * (len(codes) + 1)), N_CODE, dtype=np.int8)
    for start, c in zip(starts, codes, strict=True):
        joined[start: start + len(c)] = c
    return joined, starts


def _kmers_up_to(codes: np.ndarray, k_max: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For k = 1..k_max: the index (base-4 number) of the k-mer starting at each position along the
    last axis, and whether it holds no N. Each k's arrays are one shorter than the last k's."""
    is_base = codes < N_CODE
    digit = np.where(is_base, codes, 0).astype(np.int32)
    index, valid = digit, is_base
    yield index, valid
    for k in range(2, k_max + 1):
        # Extend each (k-1)-mer by the base after it: one multiply-add per k, not k per k-mer.
        index = index[..., :-1] * 4 + digit[..., k - 1:]
        valid = valid[..., :-1] & is_base[..., k - 1:]
        yield index, valid


def _reverse_complement_index(k: int) -> np.ndarray:
    """For every k-mer index, the index of its reverse complement."""
    powers = 4 ** np.arange(k - 1, -1, -1)
    digits = (np.arange(4 ** k)[:, None] // powers) % 4  # [4^k, k], most significant first
    return ((3 - digits[:, ::-1]) * powers).sum(axis=1)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise BaselineError(f"k must be an integer in 1..{MAX_K}, got {k!r}")


# ---------------------------------------------------------------- sequence-level k-mer spectrum


class KmerSpectrum(TransformerMixin, BaseEstimator):
    """Sequences -> frequencies of every k-mer of lengths 1..k, each length normalised per sequence.

    Args:
        k: longest k-mer (1..6); ``4 + 16 + ... + 4**k`` features.
        both_strands: add each k-mer's count to its reverse complement's, for signals whose strand
            is arbitrary.
    """

    def __init__(self, k: int = DEFAULT_K, both_strands: bool = False):
        self.k = k
        self.both_strands = both_strands

    def fit(self, sequences: Sequence[str], y=None) -> KmerSpectrum:
        _check_k(self.k)
        return self

    def transform(self, sequences: Sequence[str]) -> np.ndarray:
        joined, starts = _join([base_codes(s) for s in sequences], gap=self.k)
        owner = np.full(len(joined), -1, dtype=np.int64)
        for row, (start, s) in enumerate(zip(starts, sequences, strict=True)):
            owner[start: start + len(s)] = row
        kmers = _kmers_up_to(joined, self.k)
        blocks = [self._frequencies(index, valid, owner, len(sequences), k)
                  for k, (index, valid) in enumerate(kmers, start=1)]
        return np.hstack(blocks).astype(np.float32)

    def _frequencies(self, index: np.ndarray, valid: np.ndarray, owner: np.ndarray, rows: int,
                     k: int) -> np.ndarray:
        # A k-mer holding an N (a gap or an unknown base) is counted nowhere.
        cell = owner[: len(index)][valid] * 4 ** k + index[valid]
        counts = np.bincount(cell, minlength=rows * 4 ** k).reshape(rows, 4 ** k).astype(np.float64)
        if self.both_strands:
            counts = counts + counts[:, _reverse_complement_index(k)]
        total = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def kmer_sequence_model(*, k: int = DEFAULT_K, both_strands: bool = False) -> Pipeline:
    """k-mer spectrum -> standardisation -> L2 logistic regression, fitted on sequences (str).

    Strong regularisation (``C=0.01``) because the spectrum has up to 5,460 correlated features for
    a few thousand sequences; standardising lets one penalty suit rare and common k-mers alike.
    """
    _check_k(k)
    return Pipeline([
        ("kmers", KmerSpectrum(k=k, both_strands=both_strands)),
        ("scale", StandardScaler()),
        ("logreg", LogisticRegression(C=0.01, max_iter=1000)),
    ])


# ---------------------------------------------------------------- per-base windows (splice)


def position_windows(codes: Sequence[np.ndarray], *, left: int = SPLICE_LEFT,
                     right: int = SPLICE_RIGHT) -> np.ndarray:
    """The window ``[i - left, i + right]`` around every base of every sequence, in order.

    Args:
        codes: one :func:`base_codes` array per sequence.
        left, right: bases before and after the centre base; past a sequence's ends the window
            reads N.

    Returns:
        ``int8 [total bases, left + 1 + right]``; the centre base is column ``left``.
    """
    joined, starts = _join(codes, gap=max(left, right))
    windows = np.lib.stride_tricks.sliding_window_view(joined, left + 1 + right)
    centres = np.concatenate([start + np.arange(len(c)) for start, c in zip(starts, codes, strict=True)])
    return windows[centres - left]


class PositionalKmers(TransformerMixin, BaseEstimator):
    """Windows -> sparse one-hot of the k-mer (lengths 1..k) starting at each offset of the window.

    A linear model on these features is a weighted-degree-kernel classifier: it can weigh GT at
    the donor offset and a pyrimidine run upstream of an acceptor separately. Input is the output of
    :func:`position_windows`; a k-mer holding an N sets no feature.
    """

    def __init__(self, k: int = SPLICE_DEFAULT_K):
        self.k = k

    def fit(self, windows: np.ndarray, y=None) -> PositionalKmers:
        _check_k(self.k)
        return self

    def transform(self, windows: np.ndarray) -> sp.csr_matrix:
        width = windows.shape[1]
        columns, present, offset = [], [], 0
        for k, (index, valid) in enumerate(_kmers_up_to(windows, self.k), start=1):
            slots = width - k + 1
            columns.append(offset + np.arange(slots, dtype=np.int32) * 4 ** k + index)  # [rows, slots]
            present.append(valid)
            offset += slots * 4 ** k
        per_row = sum(c.shape[1] for c in columns)
        # Every row has the same number of slots; an absent k-mer is an explicit zero.
        return sp.csr_matrix(
            (np.hstack(present).ravel().astype(np.float32), np.hstack(columns).ravel(),
             np.arange(0, len(windows) * per_row + 1, per_row)),
            shape=(len(windows), offset),
        )


def kmer_splice_model(*, k: int = SPLICE_DEFAULT_K) -> Pipeline:
    """Positional k-mers of a window around each base -> multinomial logistic regression.

    No scaling: the features are 0/1 indicators already. ``C=0.1`` keeps the weights of k-mers seen
    at an offset only a few times small.
    """
    _check_k(k)
    return Pipeline([
        ("kmers", PositionalKmers(k=k)),
        ("logreg", LogisticRegression(C=0.1, max_iter=500)),
    ])


# ---------------------------------------------------------------- PWM log-odds scans

# Promoter: TATA box (full and core), CCAAT box, GC box, YY1, and the initiator, DPE and sigma70
# elements of the other species we simulate. Enhancer: every measured JASPAR matrix, since an
# enhancer is a cluster of binding sites of whichever factors.
PROMOTER_MOTIFS: tuple[str, ...] = (
    "MA0108.2", "MA0108.3", "MA0060.3", "MA0079.5", "MA0095.4",
    "INR-MAMMAL", "INR-FLY", "DPE-FLY", "SIGMA70-35", "SIGMA70-10",
)
ENHANCER_MOTIFS: tuple[str, ...] = tuple(m.id for m in reference.MOTIFS.values() if m.kind == "jaspar")
MOTIFS_BY_TASK: dict[str, tuple[str, ...]] = {"promoter": PROMOTER_MOTIFS, "enhancer": ENHANCER_MOTIFS}
# Uniform background: a per-dataset composition would only shift every window's score of a motif by
# the same constant, which the logistic regression's intercept absorbs.
_BACKGROUND = np.full(4, 0.25)


def log_odds_with_n(motif: reference.Motif) -> np.ndarray:
    """``[5, width]`` log-odds against a uniform background; row 4 (N) is 0, no evidence either way."""
    return np.vstack([motif.log_odds(_BACKGROUND), np.zeros((1, motif.width))])


def _reverse_complement(log_odds: np.ndarray) -> np.ndarray:
    """The same matrix read on the other strand: rows A C G T become T G C A, columns reversed."""
    return np.vstack([log_odds[3::-1, ::-1], log_odds[4:, ::-1]])


def window_scores(codes: np.ndarray, log_odds: np.ndarray) -> np.ndarray:
    """Log-odds of every window: ``codes [n, L]``, ``log_odds [5, m]`` -> ``[n, L - m + 1]``."""
    width = log_odds.shape[1]
    starts = codes.shape[1] - width + 1
    scores = np.zeros((codes.shape[0], starts))
    for column in range(width):  # a gather per column keeps memory at one [n, starts] array
        scores += log_odds[codes[:, column: column + starts], column]
    return scores


class MotifScanner(TransformerMixin, BaseEstimator):
    """Sequences -> per motif, both strands: the best window's log-odds and the total affinity
    (log of the summed odds of every window, which grows with the number of good sites).

    A sequence shorter than a motif is read as padded with N.

    Args:
        motif_ids: IDs in :data:`common.synthetic.reference.MOTIFS`.
    """

    def __init__(self, motif_ids: Sequence[str] = PROMOTER_MOTIFS):
        self.motif_ids = motif_ids

    def fit(self, sequences: Sequence[str], y=None) -> MotifScanner:
        for motif_id in self.motif_ids:
            try:
                reference.get_motif(motif_id)
            except KeyError as err:
                raise BaselineError(err.args[0]) from None
        return self

    def transform(self, sequences: Sequence[str]) -> np.ndarray:
        codes = [base_codes(s) for s in sequences]
        lengths = np.array([len(c) for c in codes])
        motifs = [reference.get_motif(m) for m in self.motif_ids]
        padded = np.full((len(codes), max(lengths.max(), max(m.width for m in motifs))), N_CODE, np.int8)
        for row, c in enumerate(codes):
            padded[row, : len(c)] = c
        return np.hstack([self._features(padded, lengths, m) for m in motifs])

    @staticmethod
    def _features(padded: np.ndarray, lengths: np.ndarray, motif: reference.Motif) -> np.ndarray:
        forward = log_odds_with_n(motif)
        scores = np.concatenate([window_scores(padded, forward),
                                 window_scores(padded, _reverse_complement(forward))], axis=1)
        starts = scores.shape[1] // 2
        last_start = np.maximum(lengths - motif.width, 0)[:, None]  # windows inside the sequence
        inside = np.tile(np.arange(starts)[None, :] <= last_start, 2)
        scores = np.where(inside, scores, -np.inf)
        return np.stack([scores.max(axis=1), logsumexp(scores, axis=1)], axis=1)  # [n, 2]


class SplicePwmScores(TransformerMixin, BaseEstimator):
    """Windows -> the donor and the acceptor matrix's log-odds with the centre base as the labelled
    base (MaxEntScan's setting, with first-order matrices). Input is :func:`position_windows` output.

    Args:
        left: the centre column of the windows (``left`` of :func:`position_windows`).
    """

    def __init__(self, left: int = SPLICE_LEFT):
        self.left = left

    def fit(self, windows: np.ndarray, y=None) -> SplicePwmScores:
        return self

    def transform(self, windows: np.ndarray) -> np.ndarray:
        return np.stack([self._score(windows, reference.DONOR, DONOR_ANCHOR),
                         self._score(windows, reference.ACCEPTOR, ACCEPTOR_ANCHOR)], axis=1)

    def _score(self, windows: np.ndarray, motif: reference.Motif, anchor: int) -> np.ndarray:
        start = self.left - anchor
        if start < 0 or start + motif.width > windows.shape[1]:
            raise BaselineError(f"{motif.name} matrix (width {motif.width}, labelled base at column "
                                f"{anchor}) does not fit windows of width {windows.shape[1]} "
                                f"centred at column {self.left}")
        return window_scores(windows[:, start: start + motif.width], log_odds_with_n(motif))[:, 0]


def pwm_sequence_model(*, task: str) -> Pipeline:
    """Motif scan -> standardisation -> logistic regression, fitted on sequences (str)."""
    if task not in MOTIFS_BY_TASK:
        raise BaselineError(f"the pwm baseline has no motifs for task {task!r}; "
                            f"it applies to {', '.join(_tasks_for(PWM))}")
    return Pipeline([
        ("motifs", MotifScanner(motif_ids=MOTIFS_BY_TASK[task])),
        ("scale", StandardScaler()),
        ("logreg", LogisticRegression(C=1.0, max_iter=1000)),
    ])


def pwm_splice_model() -> Pipeline:
    """Donor and acceptor log-odds at each base -> standardisation -> multinomial logistic regression."""
    return Pipeline([
        ("pwm", SplicePwmScores()),
        ("scale", StandardScaler()),
        ("logreg", LogisticRegression(C=1.0, max_iter=1000)),
    ])


# ---------------------------------------------------------------- running a baseline


def applicable_methods(task: str) -> tuple[str, ...]:
    """The baseline methods that apply to ``task`` (``pwm`` needs motifs: not for coding)."""
    spec = get_task(task)
    if spec.name == "splice" or spec.name in MOTIFS_BY_TASK:  # the generator's motifs and splice PWMs
        return METHODS
    return (KMER,)


def _tasks_for(method: str) -> tuple[str, ...]:
    return tuple(t for t in TASK_NAMES if method in applicable_methods(t))


def build_model(*, task: str, method: str, k: int | None = None, both_strands: bool = False) -> Pipeline:
    """The unfitted pipeline of one baseline.

    Args:
        task: a task name of :data:`common.tasks.TASKS`.
        method: ``"kmer"`` or ``"pwm"``.
        k: longest k-mer of the ``kmer`` method (1..6); default 5 for sequence tasks, 3 for splice.
        both_strands: ``kmer`` on a sequence task: count each k-mer together with its reverse complement.

    Returns:
        A ``Pipeline``; sequence tasks fit it on sequences (str), splice on :func:`position_windows`.

    Raises:
        BaselineError: unknown method, one that does not apply to the task, k out of range, or
            ``both_strands`` for splice (its signals have a strand).
    """
    spec = get_task(task)
    if method not in METHODS:
        raise BaselineError(f"unknown baseline method {method!r}; known methods: {', '.join(METHODS)}")
    if method not in applicable_methods(spec.name):
        raise BaselineError(f"method {method!r} does not apply to task {spec.name!r}; "
                            f"it applies to {', '.join(_tasks_for(method))}")
    if spec.per_position and both_strands:
        raise BaselineError(f"both_strands applies to sequence tasks, not {spec.name!r} (its sites have a strand)")
    if method == PWM:
        return pwm_splice_model() if spec.per_position else pwm_sequence_model(task=spec.name)
    if spec.per_position:
        return kmer_splice_model(k=SPLICE_DEFAULT_K if k is None else k)
    return kmer_sequence_model(k=DEFAULT_K if k is None else k, both_strands=both_strands)


def _check_datasets(train: GenomicDataset, test: GenomicDataset, spec: TaskSpec) -> None:
    for role, data in (("training", train), ("test", test)):
        if data.task.name != spec.name:
            raise BaselineError(f"the {role} set ({data.source}) is for task {data.task.name!r}, "
                                f"not {spec.name!r}")
        if len(data) == 0:
            raise BaselineError(f"the {role} set ({data.source}) is empty")


def _fit_predict_sequences(model: Pipeline, train: GenomicDataset, test: GenomicDataset) -> np.ndarray:
    labels = train.label_array()
    _check_training_labels(labels, train.task)
    model.fit(train.sequences, labels)
    return _probabilities(model, test.sequences, train.task.num_classes)


def _splice_fit_rows(labels: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to fit on and their sample weights: every site, and ``NEITHER_PER_SITE`` "neither"
    bases per site drawn at random, weighted up by the inverse of the rate they were kept at so the
    fitted class priors (and so base-level accuracy) are those of the full data."""
    sites = np.flatnonzero(labels != 0)
    neither = np.flatnonzero(labels == 0)
    keep = min(len(neither), max(NEITHER_PER_SITE * len(sites), 1))
    drawn = np.random.default_rng(seed).choice(neither, size=keep, replace=False)
    rows = np.sort(np.concatenate([sites, drawn]))
    weights = np.where(labels[rows] == 0, len(neither) / keep, 1.0)
    return rows, weights


def _probabilities(model: Pipeline, features, num_classes: int) -> np.ndarray:
    """``predict_proba`` widened to every class of the task; a class never seen in training gets 0."""
    prob = np.zeros((_num_rows(features), num_classes))
    prob[:, model.classes_] = model.predict_proba(features)
    return prob


def _num_rows(features) -> int:
    return features.shape[0] if hasattr(features, "shape") else len(features)


def _check_training_labels(labels: np.ndarray, spec: TaskSpec) -> None:
    present = np.unique(labels)
    if len(present) < 2:
        raise BaselineError(f"task {spec.name!r}: the training set holds only class "
                            f"{spec.label_names[int(present[0])]!r}; a classifier needs at least two")


def _fit_predict_splice(model: Pipeline, train: GenomicDataset, test: GenomicDataset, *,
                        seed: int, chunk: int = 50_000) -> np.ndarray:
    """Fit a per-base splice pipeline on sampled training bases; probabilities for every test base."""
    labels = train.label_array()
    _check_training_labels(labels, train.task)
    rows, weights = _splice_fit_rows(labels, seed=seed)
    train_windows = position_windows(dataset_codes(train))[rows]
    model.fit(train_windows, labels[rows], logreg__sample_weight=weights)
    test_windows = position_windows(dataset_codes(test))
    # In chunks, so the sparse features of a large test set never exist all at once.
    return np.vstack([_probabilities(model, test_windows[i: i + chunk], train.task.num_classes)
                      for i in range(0, len(test_windows), chunk)])


def dataset_codes(dataset: GenomicDataset) -> list[np.ndarray]:
    """Base codes of every sequence, from the dataset's tokens (already validated)."""
    return [_CODE_OF_TOKEN[t.numpy()] for t in dataset.tokens]


def fit_predict_baseline(train: GenomicDataset, test: GenomicDataset, *, task: str, method: str,
                         k: int | None = None, both_strands: bool = False, seed: int = 0) -> np.ndarray:
    """Fit one baseline on ``train``; class probabilities of ``test`` (``[n, C]``, per-position tasks
    ``[bases, C]`` in :meth:`GenomicDataset.label_array` order). Arguments and errors as :func:`run_baseline`."""
    spec = get_task(task)
    _check_datasets(train, test, spec)
    model = build_model(task=spec.name, method=method, k=k, both_strands=both_strands)
    if spec.per_position:
        return _fit_predict_splice(model, train, test, seed=seed)
    return _fit_predict_sequences(model, train, test)


def run_baseline(train: GenomicDataset, test: GenomicDataset, *, task: str, method: str,
                 k: int | None = None, both_strands: bool = False, seed: int = 0) -> dict[str, float]:
    """Fit one baseline on ``train`` and score it on ``test`` with the model's metrics.

    Args:
        train, test: datasets of ``task``.
        task: the task name; must be the datasets' task.
        method: ``"kmer"`` or ``"pwm"`` (see :func:`applicable_methods`).
        k, both_strands: as in :func:`build_model`.
        seed: draws the "neither" bases a splice model is fitted on.

    Returns:
        :func:`common.metrics.task_metrics` of the test set: the same keys as the model reports.

    Raises:
        BaselineError: as :func:`build_model`; datasets of another task; an empty set; a training
            set with a single class.
    """
    prob = fit_predict_baseline(train, test, task=task, method=method, k=k, both_strands=both_strands, seed=seed)
    return task_metrics(get_task(task), test.label_array(), prob)
