"""What travels between the server and an institution, named once.

Flower carries it (records inside a message), but the names and the flattening of per-task
metrics into flat metric keys live here so both sides agree without importing each other.
Only weights and aggregate numbers ever leave an institution: no sequence, label or id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from common.keys import DELTA, EPSILON, LOSS, NUM_EXAMPLES

# Record names inside a message.
ARRAYS = "arrays"  # ArrayRecord: model weights
CONFIG = "config"  # ConfigRecord, server -> institution
METRICS = "metrics"  # MetricRecord, institution -> server (numbers only)
META = "meta"  # ConfigRecord, institution -> server (who, species, status)

# Config keys, server -> institution.
SERVER_ROUND = "server-round"  # set by Flower's strategy
MODEL_CONFIG = "model-config"  # JSON of the ModelConfig, so the institution builds the same model
TASKS = "tasks"  # JSON list of the federation's tasks (the model's heads)
TRAINING = "training"  # JSON of the federation's TrainingConfig (an institution may override it)
RUN_NAME = "run-name"

# Meta keys, institution -> server.
INSTITUTION = "institution"
SPECIES = "species"
STATUS = "status"  # "trained" | "refused" | "evaluated"
REASON = "reason"

# Metric keys, institution -> server (besides NUM_EXAMPLES, EPSILON, DELTA, LOSS).
BUDGET = "budget"
REFUSED = "refused"  # 1.0 when the institution refused to train (budget exhausted)
NOISE_MULTIPLIER = "noise-multiplier"

__all__ = ["ARRAYS", "BUDGET", "CONFIG", "DELTA", "EPSILON", "INSTITUTION", "LOSS", "META", "METRICS",
           "MODEL_CONFIG", "NOISE_MULTIPLIER", "NUM_EXAMPLES", "REASON", "REFUSED", "RUN_NAME", "SERVER_ROUND",
           "SPECIES", "STATUS", "TASKS", "TRAINING", "flatten_task_metrics", "task_key", "unflatten_task_metrics"]

_SEPARATOR = "/"


def task_key(task: str, key: str) -> str:
    """``promoter/num-examples``: a per-task number in a flat metric record."""
    return f"{task}{_SEPARATOR}{key}"


def flatten_task_metrics(per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{task: {key: value}}`` -> ``{"task/key": value}``; non-numbers are dropped, NaN kept."""
    flat = {}
    for task, metrics in per_task.items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[task_key(task, key)] = float(value)
    return flat


def unflatten_task_metrics(flat: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The inverse of :func:`flatten_task_metrics`; keys without a task are ignored."""
    per_task: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        if _SEPARATOR in key:
            task, name = key.split(_SEPARATOR, 1)
            per_task.setdefault(task, {})[name] = float(value)
    return per_task


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: such values are written as null."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
