"""One federated run on the server: the round loop.

Per round: send the global model to the sampled institutions, aggregate what comes back, run
federated evaluation on the institutions' test splits, evaluate every task centrally on the
server's held-out data (per species too), append the round's :class:`RoundMetrics` to
``metrics.jsonl``, and write a checkpoint (:mod:`server.checkpoints`). A checkpoint carries the
metrics so far, so a resumed run rewrites ``metrics.jsonl`` from it and goes on from the next
round with its history intact. What each round means for the audit log is :func:`audit_round`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from rich.text import Text

from common import protocol as p
from common.checkpoint import checkpoint_privacy, load_checkpoint, start_from
from common.config import FederationConfig
from common.data.readers import load_dataset
from common.evaluation import evaluate
from common.finetuning import trainable_names
from common.logs import flower_log
from common.model import GenomicTransformer
from common.protocol import MetricsLog, RoundMetrics, Status, json_safe
from common.tasks import declared_tasks
from common.tracking import TENSORBOARD_DIR, ScalarLog, central_scalars
from server.aggregation import SecureRoundIncomplete
from server.checkpoints import RunCheckpoints
from server.ops.progress import round_summary
from server.report import report_baselines, write_report
from server.secure_aggregation import run_secure_round, secure_layout
from server.strategy import RoundRecord, SpeciesFedAvg

log = logging.getLogger(__name__)

AuditHook = Callable[[str, dict], None]
# The audit log's event for each status of an institution's round.
AUDIT_EVENTS = {Status.TRAINED: "trained", Status.REFUSED: "refused", Status.REJECTED: "update_rejected",
                Status.FAILED: "failed"}


class FederationRun:
    """Drives the strategy round by round; owns the run's output directory.

    Building one touches no file; :meth:`prepare` resumes or starts afresh (and loads the central
    evaluation data), :meth:`execute` runs the rounds.
    """

    def __init__(self, config: FederationConfig, *, num_rounds: int | None = None, audit: AuditHook | None = None,
                 simulation_paths: dict[str, str] | None = None):
        self.config = config
        self.simulation_paths = simulation_paths  # sent to simulated institutions (protocol.SIMULATION_PATHS)
        self.num_rounds = num_rounds or config.federation.rounds
        self.audit = audit or (lambda event, fields: None)
        self.metrics = MetricsLog(config.output_dir)
        self.checkpoints = RunCheckpoints(config.output_dir)
        self.history: list[RoundMetrics] = []
        self.start_round = 1
        self.central: dict = {}
        self.scalars: ScalarLog | None = None  # TensorBoard, opened with the first round written
        self._known_nodes: set[int] = set()
        torch.manual_seed(config.seed)
        self.model = GenomicTransformer(config.model, tasks=config.tasks)
        fed = config.federation
        self.strategy = SpeciesFedAvg(
            aggregation=config.aggregation, min_train_institutions=fed.min_train_institutions,
            fraction_train=fed.fraction_train, fraction_evaluate=fed.fraction_evaluate,
            min_train_nodes=fed.min_train_institutions, min_evaluate_nodes=1 if fed.fraction_evaluate else 0,
            min_available_nodes=fed.min_available_institutions,
            expected_names=lambda tasks: trainable_names(self.model, mode=config.training.trainable, tasks=tasks))

    def prepare(self, *, resume: bool) -> FederationRun:
        """Resume from the newest checkpoint, or start a fresh history; load the central data."""
        # Every checkpoint records whether the model is DP, and that depends on where it started.
        init = load_checkpoint(self.config.init_checkpoint) if self.config.init_checkpoint else None
        self.checkpoints.start_privacy = checkpoint_privacy(init) if init else None
        if resume:
            self._resume()
        else:  # a fresh run starts a fresh history in this directory
            self.metrics.clear()
            self.checkpoints.forget_final()
            if self.config.init_checkpoint:
                fresh = start_from(self.model, init)
                log.info("starting from %s (%d tensors fresh)", self.config.init_checkpoint, len(fresh))
                self.audit("initialised", {"checkpoint": str(self.config.init_checkpoint), "fresh": fresh})
        self.central = self._load_central()
        return self

    def _resume(self) -> None:
        found = self.checkpoints.load_latest_for(self.config)
        if found is None:
            log.warning("resume requested but %s holds no checkpoint: starting at round 1", self.config.output_dir)
            return
        checkpoint, self.history = found
        self.strategy.remember(self.history)
        self.model.load_state_dict(checkpoint.weights, strict=True)
        self.start_round = checkpoint.round + 1
        self.metrics.rewrite(self.history)
        log.info("resumed from %s: next round %d", checkpoint.path, self.start_round)
        self.audit("resumed", {"checkpoint": str(checkpoint.path), "next_round": self.start_round})

    def _load_central(self) -> dict:
        central_dir = self.config.central_evaluation.data_dir
        datasets = {}
        for task in self.config.tasks:
            task_dir = central_dir / task
            if task_dir.is_dir():
                datasets[task] = load_dataset(task_dir, task=task, split="test", max_len=self.config.model.max_len)
            else:
                log.warning("no central evaluation data for %s at %s", task, task_dir)
        return datasets

    # -- the loop ----------------------------------------------------------------------------------

    def execute(self, grid: Grid) -> None:
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        arrays = ArrayRecord(self.model.state_dict())
        train_config = ConfigRecord({
            p.MODEL_CONFIG: json.dumps(self.config.model.to_dict()), p.TASKS: json.dumps(list(self.config.tasks)),
            p.TASK_DECLARATIONS: json.dumps(declared_tasks(self.config.tasks)),
            p.TRAINING: self.config.training.model_dump_json(), p.RUN_NAME: self.config.name,
            p.NUM_ROUNDS: self.num_rounds,
            **({p.SIMULATION_PATHS: json.dumps(self.simulation_paths)} if self.simulation_paths else {})})
        self.audit("run_started", {"name": self.config.name, "rounds": self.num_rounds,
                                   "start_round": self.start_round})
        flower_log(f"{self.config.name}: {self.num_rounds} rounds; outputs in {self.config.output_dir}")
        if self.start_round == 1 and not self.history:
            self._record(0, RoundRecord(), 0.0)
        timeout = self.config.federation.round_timeout_s
        for server_round in range(self.start_round, self.num_rounds + 1):
            started = time.monotonic()
            self.strategy.set_global(arrays)
            if self.config.aggregation.secure is not None:
                arrays = self._secure_round(grid, server_round, arrays, train_config)
            else:
                replies = grid.send_and_receive(self.strategy.configure_train(server_round, arrays, train_config, grid),
                                                timeout=timeout)
                arrays, _ = self.strategy.aggregate_train(server_round, replies)
            self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
            replies = grid.send_and_receive(
                self.strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(train_config)), grid),
                timeout=timeout)
            self.strategy.aggregate_evaluate(server_round, replies)
            self._record(server_round, self.strategy.rounds[server_round], time.monotonic() - started)
            path = self.checkpoints.save_round(self.model, self.config, server_round, self.history)
            self.audit("checkpoint_written", {"round": server_round, "path": str(path)})
        self._finish()

    def _secure_round(self, grid: Grid, server_round: int, arrays: ArrayRecord, train_config: ConfigRecord
                      ) -> ArrayRecord:
        """A round through SecAgg+ (server/secure_aggregation.py); one that cannot finish is tried
        again, skipped (the model kept) or stops the run, as ``aggregation.secure.on_failure`` says."""
        settings, aggregation = self.config.aggregation.secure, self.config.aggregation
        clips = [c for c in (aggregation.max_update_norm, aggregation.central_dp and aggregation.central_dp.clip) if c]
        layout = secure_layout(trainable_names(self.model, mode=self.config.training.trainable, tasks=self.config.tasks),
                               self.strategy.global_weights)
        attempts = 1 + (settings.retries if settings.on_failure == "retry" else 0)
        for attempt in range(1, attempts + 1):
            self.strategy.rounds[server_round] = RoundRecord()  # a retried round is recorded once, as it ended
            try:
                result = run_secure_round(grid, self.strategy, server_round=server_round, arrays=arrays,
                                          train_config=train_config, settings=settings,
                                          timeout=settings.timeout_s or self.config.federation.round_timeout_s,
                                          layout=layout, clip=min(clips) if clips else None, attempt=attempt)
                arrays = self.strategy.aggregate_secure(server_round, result)
                self.audit("secure_round", {"round": server_round, "attempt": attempt,
                                            "in_sum": sorted(r.institution for r in result.trained)})
                return arrays
            except SecureRoundIncomplete as err:
                self.audit("secure_round_failed", {"round": server_round, "attempt": attempt, "reason": str(err)})
                flower_log(f"{err} (attempt {attempt} of {attempts})")
                if attempt < attempts:
                    continue
                if settings.on_failure != "skip":
                    raise
                self.strategy.rounds[server_round].train.extend(err.rejected)
                rejected = {r.node_id for r in err.rejected}
                self.strategy.drop_out(server_round, {n: v for n, v in err.ready.items() if n not in rejected},
                                       f"round skipped: {err}")
                self.strategy.set_global(arrays)
        return arrays

    def central_evaluation(self) -> dict:
        batch = self.config.central_evaluation.batch_size
        return {task: evaluate(self.model, data, batch_size=batch, by_species=True)
                for task, data in self.central.items()}

    def _record(self, server_round: int, record: RoundRecord, seconds: float) -> None:
        line = RoundMetrics(round=server_round, central=self.central_evaluation(), federated=record.evaluate,
                            institutions={r.institution: r.as_round() for r in record.train},
                            aggregation=record.aggregation, wall_seconds=seconds, central_dp=record.central_dp)
        self.history.append(line)
        self.metrics.append(line)
        if self.scalars is None:
            self.scalars = ScalarLog(self.config.output_dir / TENSORBOARD_DIR)
        self.scalars.write(server_round, central_scalars(line.central, line.federated, line.epsilon))
        if server_round:  # the report's tables and plots follow the run; baselines come at the end
            write_report(self.config.output_dir, self.history, self.config)
        flower_log(Text.from_markup(round_summary(line, self.num_rounds)).plain)  # `flwr log`, `--stream`
        audit_round(self.audit, server_round, record, seconds, self._known_nodes)

    def _finish(self) -> None:
        baseline, dp_baseline = report_baselines(self.history, self.config, self.central)
        final = self.checkpoints.save_final(self.model, self.config, self.num_rounds, self.history,
                                            baselines=(baseline, dp_baseline))
        report = write_report(self.config.output_dir, self.history, self.config, baseline=baseline,
                              dp_baseline=dp_baseline)
        self.audit("run_finished", {"final": str(final), "report": str(report)})
        flower_log(f"{self.config.name}: finished; report {report}, final model {final}")
        if self.scalars is not None:
            self.scalars.close()


def audit_round(audit: AuditHook, server_round: int, record: RoundRecord, seconds: float,
                known_nodes: set[int]) -> None:
    """The audit log's lines for one round: first connections, each institution's outcome, the round."""
    for report in record.train:
        if report.node_id not in known_nodes and report.status != Status.FAILED:
            known_nodes.add(report.node_id)
            audit("institution_connected", {"node_id": report.node_id, "institution": report.institution,
                                            "species": report.species})
        audit(AUDIT_EVENTS[report.status], json_safe({
            "round": server_round, "node_id": report.node_id, "institution": report.institution,
            "examples": report.examples, "epsilon": report.epsilon, "delta": report.delta, "reason": report.reason}))
    if server_round:
        audit("round_completed", {"round": server_round, "seconds": seconds,
                                  "accepted": sum(r.status == Status.TRAINED for r in record.train)})
