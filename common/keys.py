"""Record and metric key names, defined once.

Record keys travel in the messages between institutions and the server (kebab-case, as Flower
configs are); metric keys name the numbers :mod:`common.metrics` produces (snake_case, as each
task's ``headline_metric`` in :mod:`common.tasks` spells them). Use these constants, never the
literal strings, so a renamed key is one edit and a typo is an ``AttributeError``.
"""

from __future__ import annotations

# Record keys: what an institution reports beside its weights.
NUM_EXAMPLES = "num-examples"
EPSILON = "epsilon"
DELTA = "delta"
LOSS = "loss"

# Metric keys shared by both kinds of task.
ACCURACY = "accuracy"

# Sequence-level metrics (one label per sequence).
BALANCED_ACCURACY = "balanced_accuracy"
MCC = "mcc"
F1 = "f1"
AUROC = "auroc"
AUPRC = "auprc"

# Per-position metrics for splice sites (one label per base: neither / donor / acceptor).
PR_AUC_DONOR = "pr_auc_donor"
PR_AUC_ACCEPTOR = "pr_auc_acceptor"
PR_AUC_MEAN = "pr_auc_mean"
TOPK_DONOR = "topk_donor"
TOPK_ACCEPTOR = "topk_acceptor"

# The keys each kind of task reports, in the order tables show them.
SEQUENCE_METRIC_KEYS: tuple[str, ...] = (ACCURACY, BALANCED_ACCURACY, MCC, F1, AUROC, AUPRC)
POSITION_METRIC_KEYS: tuple[str, ...] = (
    ACCURACY, PR_AUC_DONOR, PR_AUC_ACCEPTOR, PR_AUC_MEAN, TOPK_DONOR, TOPK_ACCEPTOR,
)
