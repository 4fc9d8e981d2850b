"""Evaluation metrics for every task, on scikit-learn; the model and the baselines share them.

Keys are the constants of :mod:`common.protocol`. Values are plain floats. A metric that is undefined
for the data given (an AUROC when only one class occurs, a splice PR-AUC when no site of that class
occurs) is ``nan`` rather than an exception or a made-up 0, so one degenerate evaluation set does not
crash a federated round and cannot pass for a real score.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
)

from common import protocol
from common.tasks import IGNORE_INDEX, TaskSpec, get_task

_SPLICE_LABELS = get_task("splice").label_names


def _check_inputs(y_true, prob, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 ``[N]`` and probabilities as float64 ``[N, C]``, or a ValueError saying why not."""
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2:
        raise ValueError(f"{where}: expected y_true [N] and prob [N, C], got shapes {y.shape} and {p.shape}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"{where}: {y.shape[0]} labels but {p.shape[0]} rows of probabilities")
    if y.shape[0] == 0:
        raise ValueError(f"{where}: no examples to score")
    if p.shape[1] < 2:
        raise ValueError(f"{where}: expected at least 2 class columns, got {p.shape[1]}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"{where}: labels must lie in 0..{p.shape[1] - 1}, got {y.min()}..{y.max()}")
    if not np.isfinite(p).all():
        raise ValueError(f"{where}: probabilities contain NaN or infinity")
    return y.astype(np.int64), p


def _one_vs_rest(score: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, p: np.ndarray,
                 cls: int) -> float:
    """``score(is_cls, p[:, cls])``, or nan when ``cls`` is absent or is every label (undefined)."""
    is_cls = y == cls
    if is_cls.all() or not is_cls.any():
        return float("nan")
    return float(score(is_cls, p[:, cls]))


def _macro(values: list[float]) -> float:
    """Mean over the defined values; nan when none is defined."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def sequence_metrics(y_true, prob) -> dict[str, float]:
    """Metrics of one label per sequence, from class probabilities.

    Args:
        y_true: int labels ``[N]`` in ``0..C-1``.
        prob: class probabilities ``[N, C]`` (softmax output); the prediction is the argmax.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``mcc``, ``f1``, ``auroc``, ``auprc`` (keys in
        :mod:`common.protocol`). With two classes, F1, AUROC and AUPRC (average precision) are for the
        positive class 1; with more, they are macro averages of one-vs-rest scores. When ``y_true``
        holds a single class, AUROC and AUPRC are undefined and returned as ``nan``; MCC is then 0
        (scikit-learn's convention for a zero denominator) and balanced accuracy is the recall of
        the class present.

    Raises:
        ValueError: shapes disagree, no examples, labels out of range, or non-finite probabilities.
    """
    y, p = _check_inputs(y_true, prob, where="sequence_metrics")
    pred = p.argmax(axis=1)
    classes = range(p.shape[1])
    with warnings.catch_warnings():
        # Legal for a single-class set; the docstring says what the values then mean.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        balanced = balanced_accuracy_score(y, pred)
        mcc = matthews_corrcoef(y, pred)
    if p.shape[1] == 2:
        f1 = f1_score(y, pred, pos_label=1, average="binary", zero_division=0.0)
        auroc = _one_vs_rest(roc_auc_score, y, p, 1)
        auprc = _one_vs_rest(average_precision_score, y, p, 1)
    else:
        f1 = f1_score(y, pred, labels=list(classes), average="macro", zero_division=0.0)
        auroc = _macro([_one_vs_rest(roc_auc_score, y, p, c) for c in classes])
        auprc = _macro([_one_vs_rest(average_precision_score, y, p, c) for c in classes])
    return {
        protocol.ACCURACY: float(accuracy_score(y, pred)),
        protocol.BALANCED_ACCURACY: float(balanced),
        protocol.MCC: float(mcc),
        protocol.F1: float(f1),
        protocol.AUROC: auroc,
        protocol.AUPRC: auprc,
    }


def topk_accuracy(is_site: np.ndarray, score: np.ndarray) -> float:
    """SpliceAI's top-k accuracy: with k the number of true sites, the fraction of the k
    highest-scoring positions that are true sites; nan when there is no true site.

    Ties at the cut are broken by position (first wins), so the value is deterministic.
    """
    k = int(is_site.sum())
    if k == 0:
        return float("nan")
    top = np.argsort(-score, kind="stable")[:k]
    return float(is_site[top].mean())


def position_metrics(y_true, prob, class_names: tuple[str, ...] = _SPLICE_LABELS) -> dict[str, float]:
    """Per-base metrics over bases pooled from every sequence; class 0 is the background.

    Args:
        y_true: int labels ``[N_bases]`` (splice: 0 neither, 1 donor, 2 acceptor); entries equal to
            ``IGNORE_INDEX`` (padding) are dropped with their rows of ``prob``.
        prob: class probabilities ``[N_bases, C]``.
        class_names: the task's class names (default splice's), which name the per-class keys.

    Returns:
        ``accuracy`` (base level, argmax); for every class but the background ``pr_auc_<class>``
        (average precision of that class against the rest) and ``topk_<class>`` (see
        :func:`topk_accuracy`); ``pr_auc_mean``, the mean of the defined per-class PR-AUCs. Splice's
        keys are ``pr_auc_donor``, ``pr_auc_acceptor``, ``topk_donor``, ``topk_acceptor``. A class
        with no true site has nan PR-AUC and top-k.

    Raises:
        ValueError: shapes disagree, nothing left after dropping padding, a label out of range,
            fewer class columns than names, or non-finite probabilities.
    """
    y = np.asarray(y_true)
    p = np.asarray(prob)
    if y.ndim == 1 and p.ndim == 2 and y.shape[0] == p.shape[0]:
        keep = y != IGNORE_INDEX
        y, p = y[keep], p[keep]
    y, p = _check_inputs(y, p, where="position_metrics")
    if p.shape[1] < len(class_names):
        raise ValueError(f"position_metrics: expected {len(class_names)} class columns "
                         f"{class_names}, got {p.shape[1]}")
    out = {protocol.ACCURACY: float(accuracy_score(y, p.argmax(axis=1)))}
    pr_aucs = []
    for c, name in enumerate(class_names[1:], start=1):
        out[f"pr_auc_{name}"] = _one_vs_rest(average_precision_score, y, p, c)
        pr_aucs.append(out[f"pr_auc_{name}"])
    out[protocol.PR_AUC_MEAN] = _macro(pr_aucs)
    for c, name in enumerate(class_names[1:], start=1):
        out[f"topk_{name}"] = topk_accuracy(y == c, p[:, c])
    return out


def position_metric_keys(spec: TaskSpec) -> tuple[str, ...]:
    """The keys :func:`position_metrics` returns for ``spec``, in table order."""
    names = spec.label_names[1:]
    return (protocol.ACCURACY, *(f"pr_auc_{n}" for n in names), protocol.PR_AUC_MEAN, *(f"topk_{n}" for n in names))


def metric_keys(spec: TaskSpec) -> tuple[str, ...]:
    """The metric keys of a task, in the order tables show them."""
    return position_metric_keys(spec) if spec.per_position else protocol.SEQUENCE_METRIC_KEYS


def task_metrics(task: str | TaskSpec, y_true, prob) -> dict[str, float]:
    """The metrics of ``task``: :func:`position_metrics` for per-position tasks, else
    :func:`sequence_metrics`. Every task's ``headline_metric`` is among the returned keys.

    Raises:
        ValueError: an unknown task, probabilities whose class count is not the task's, or any
            error of the metric function.
    """
    spec = get_task(task) if isinstance(task, str) else task
    width = np.shape(prob)[-1] if np.ndim(prob) == 2 else None
    if width != spec.num_classes:
        raise ValueError(f"task {spec.name!r}: expected prob of shape [N, {spec.num_classes}], "
                         f"got {np.shape(prob)}")
    if spec.per_position:
        return position_metrics(y_true, prob, spec.label_names)
    return sequence_metrics(y_true, prob)
