"""The words both sides share, named once: what travels between the server and an institution,
the Flower run config keys, the status of an institution's round, metric names, and the record
every round leaves in ``metrics.jsonl`` (written and read only through :class:`MetricsLog`).

Flower carries the messages (records inside a message); the names and the flattening of per-task
metrics into flat metric keys live here so both sides agree without importing each other. Only
weights and aggregate numbers ever leave an institution: no sequence, label or id.
Use these constants, never the literal strings, so a renamed key is one edit and a typo is an
``AttributeError``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from common.atomic import atomic_write_text

# -- record names inside a message ----------------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: model weights
CONFIG = "config"  # ConfigRecord, server -> institution
METRICS = "metrics"  # MetricRecord, institution -> server (numbers only)
META = "meta"  # ConfigRecord, institution -> server (who, species, status)

# -- config keys, server -> institution -----------------------------------------------------------
SERVER_ROUND = "server-round"  # set by Flower's strategy
NUM_ROUNDS = "num-rounds"  # the federation's rounds: where this round lies in the learning-rate schedule
MODEL_CONFIG = "model-config"  # JSON of the ModelConfig, so the institution builds the same model
TASKS = "tasks"  # JSON list of the federation's tasks (the model's heads)
TASK_DECLARATIONS = "task-declarations"  # JSON {name: declaration} of the tasks that are not built in
TRAINING = "training"  # JSON of the federation's TrainingConfig (an institution may override it)
RUN_NAME = "run-name"
# Simulation only: JSON {"config_file", "output_dir"} as the ServerApp resolved them. Flower may load
# the simulated ClientApps from another copy of the code than the ServerApp (the FAB vs an editable
# install), so paths derived from the code's location would differ; a deployed SuperNode ignores it.
SIMULATION_PATHS = "simulation-paths"
# Secure aggregation (common/secure_sum.py): the masked vector's parameter names in order, this
# institution's weight per parameter group (JSON {group: w}), and the L2 bound it clips its whole
# update to before weighting and masking (absent: no bound).
SECURE_LAYOUT = "secure-layout"
SECURE_WEIGHTS = "secure-weights"
SECURE_CLIP = "secure-clip"
ATTEMPT = "attempt"  # a secure round tried again: a fresh seed for its training (1 for the first try)
# The query a secure round starts with: each sampled institution says whether it will train this
# round and how many records of each task (metadata the plain protocol sends with every update).
DESCRIBE = "query.describe"

# -- meta keys, institution -> server -------------------------------------------------------------
INSTITUTION = "institution"
SPECIES = "species"
STATUS = "status"  # a Status value
REASON = "reason"
ACCOUNTANT = "accountant"  # the ledger's accountant (rdp|prv), in a training reply: what its ε means

# -- numbers an institution reports (kebab-case, as Flower records are) ---------------------------
NUM_EXAMPLES = "num-examples"
EPSILON = "epsilon"
DELTA = "delta"
LOSS = "loss"
BUDGET = "budget"
REFUSED = "refused"  # 1.0 when the institution refused to train (budget exhausted)
NOISE_MULTIPLIER = "noise-multiplier"

# -- metric names (snake_case, as each task's ``headline_metric`` in common/tasks.py spells them) ---
ACCURACY = "accuracy"
BALANCED_ACCURACY = "balanced_accuracy"  # sequence tasks (one label per sequence) from here ...
MCC = "mcc"
F1 = "f1"
AUROC = "auroc"
AUPRC = "auprc"
PR_AUC_DONOR = "pr_auc_donor"  # ... per-position splice metrics (neither / donor / acceptor) from here
PR_AUC_ACCEPTOR = "pr_auc_acceptor"
PR_AUC_MEAN = "pr_auc_mean"
TOPK_DONOR = "topk_donor"
TOPK_ACCEPTOR = "topk_acceptor"

# The keys each kind of task reports, in the order tables show them.
SEQUENCE_METRIC_KEYS: tuple[str, ...] = (ACCURACY, BALANCED_ACCURACY, MCC, F1, AUROC, AUPRC)
POSITION_METRIC_KEYS: tuple[str, ...] = (
    ACCURACY, PR_AUC_DONOR, PR_AUC_ACCEPTOR, PR_AUC_MEAN, TOPK_DONOR, TOPK_ACCEPTOR,
)


class Status(StrEnum):
    """What became of an institution's part in a round (a str: it travels and is written as is)."""

    TRAINED = "trained"  # trained and, on the server, accepted
    REFUSED = "refused"  # the institution's next round would pass its budget: recorded, not a failure
    REJECTED = "rejected"  # the server's validation refused the update; never averaged
    FAILED = "failed"  # an error reply
    EVALUATED = "evaluated"  # a federated-evaluation reply
    DECLINED = "declined"  # the institution does not share evaluation metrics (privacy.share_evaluation)
    READY = "ready"  # a secure round's describe reply: it can afford the round and will train


class RunConfigKey(StrEnum):
    """The Flower run config keys helixfed reads (``[tool.flwr.app.config]`` in pyproject.toml)."""

    CONFIG_FILE = "config-file"  # federation YAML
    BASE_DIR = "base-dir"  # relative paths resolve here; empty: the app's directory
    OUT_DIR = "out-dir"  # overrides the federation file's output_dir; empty: keep it
    NUM_ROUNDS = "num-server-rounds"  # 0: the federation file's federation.rounds
    RESUME = "resume"  # continue from the last checkpoint in the output directory


# -- per-task numbers in flat records -------------------------------------------------------------
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


def json_safe(value):
    """``value`` with every NaN and infinity (at any depth) replaced by None: strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return finite_or_none(value)
    return value


# -- the record of a round ------------------------------------------------------------------------
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class InstitutionRound:
    """One institution's part in one round, as the server saw it."""

    species: str
    status: Status
    examples: dict[str, int] = field(default_factory=dict)  # task -> records trained on
    epsilon: float | None = None  # cumulative, from the institution's ledger
    delta: float | None = None
    budget: float | None = None
    loss: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    accountant: str | None = None  # how its ledger computes ε (rdp|prv)


@dataclass(frozen=True)
class RoundMetrics:
    """One line of ``metrics.jsonl``: round 0 is the initial model (no institution trained)."""

    round: int
    central: dict[str, dict]  # task -> headline metrics, plus "species" -> per-species metrics
    federated: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> weighted means
    institutions: dict[str, InstitutionRound] = field(default_factory=dict)
    aggregation: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> institution -> w
    wall_seconds: float = 0.0
    # Institution-level DP at the server, when on: noise multiplier, clip, who was clipped, noise std
    # per group, and the institution-level epsilon/delta after this round (server/central_dp.py).
    central_dp: dict = field(default_factory=dict)

    @property
    def examples(self) -> dict[str, int]:
        return {name: sum(r.examples.values()) for name, r in self.institutions.items()}

    @property
    def epsilon(self) -> dict[str, float | None]:
        return {name: r.epsilon for name, r in self.institutions.items()}

    def with_status(self, status: Status) -> list[str]:
        return sorted(name for name, r in self.institutions.items() if r.status == status)

    def to_json(self) -> dict:
        """The line as written: the fields, plus examples/epsilon/refused/rejected/failed for readers
        of the file that want them without summing; NaN and infinity as null."""
        institutions = {name: asdict(r) for name, r in self.institutions.items()}
        reasons = {s: {n: self.institutions[n].reason for n in self.with_status(s)}
                   for s in (Status.REJECTED, Status.FAILED)}
        return json_safe({
            "round": self.round, "central": self.central, "federated": self.federated,
            "institutions": institutions, "aggregation": self.aggregation, "wall_seconds": self.wall_seconds,
            "central_dp": self.central_dp,
            "examples": self.examples, "epsilon": self.epsilon, "refused": self.with_status(Status.REFUSED),
            "rejected": reasons[Status.REJECTED], "failed": reasons[Status.FAILED]})

    @classmethod
    def from_json(cls, line: Mapping) -> RoundMetrics:
        institutions = {name: InstitutionRound(**{**info, "status": Status(info["status"])})
                        for name, info in line.get("institutions", {}).items()}
        return cls(round=int(line["round"]), central=line.get("central", {}), federated=line.get("federated", {}),
                   institutions=institutions, aggregation=line.get("aggregation", {}),
                   wall_seconds=float(line.get("wall_seconds") or 0.0), central_dp=line.get("central_dp") or {})


@dataclass(frozen=True)
class InstitutionSummary:
    """One institution over a run, as the server saw it: what the report, the model card and the
    checkpoints' provenance all state."""

    species: str
    rounds_trained: int
    refused: int
    examples: dict[str, int]  # records per task in the last round it trained
    epsilon: float | None  # the largest cumulative ε it reported (ε only grows)
    delta: float | None
    budget: float | None
    accountant: str | None


def institution_summaries(history: Sequence[RoundMetrics]) -> dict[str, InstitutionSummary]:
    """Per institution (sorted by name), over every round of ``history``."""
    summaries = {}
    for name in sorted({name for line in history for name in line.institutions}):
        seen = [line.institutions[name] for line in history if name in line.institutions]
        trained = [r for r in seen if r.status == Status.TRAINED]
        last = (trained or seen)[-1]
        reported = [r for r in seen if r.epsilon is not None]
        spent = max(reported, key=lambda r: r.epsilon) if reported else last
        summaries[name] = InstitutionSummary(
            species=last.species, rounds_trained=len(trained), refused=sum(r.status == Status.REFUSED for r in seen),
            examples=dict(last.examples) if trained else {}, epsilon=spent.epsilon, delta=spent.delta,
            budget=spent.budget, accountant=spent.accountant)
    return summaries


class MetricsLog:
    """``<output dir>/metrics.jsonl``: one :class:`RoundMetrics` per line, appended and fsynced as
    each round completes (a reader following the file sees whole lines only)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / METRICS_FILE

    def append(self, record: RoundMetrics) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, records: list[RoundMetrics]) -> None:
        """Replace the file atomically by ``records`` (a resumed run restores its history)."""
        atomic_write_text(self.path, "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def read(self) -> list[RoundMetrics]:
        if not self.path.exists():
            return []
        return [RoundMetrics.from_json(json.loads(line)) for line in self.path.read_text().splitlines()
                if line.strip()]
