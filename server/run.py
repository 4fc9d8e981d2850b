"""One federated run on the server: rounds, central evaluation, metrics, checkpoints, resume.

Per round: send the global model to the sampled institutions, aggregate what comes back, run
federated evaluation on the institutions' test splits, evaluate every task centrally on the
server's held-out data (per species too), append one line to ``metrics.jsonl``, and write a
checkpoint atomically. A checkpoint carries the metrics so far, so a resumed run rewrites
``metrics.jsonl`` from the checkpoint and goes on from the next round with history intact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from common import protocol as p
from common.atomic import atomic_write_text
from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.data.readers import load_dataset
from common.evaluation import evaluate
from common.model import GenomicTransformer
from common.protocol import finite_or_none
from server.config import FederationConfig
from server.strategy import RoundRecord, SpeciesFedAvg

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
KEEP_CHECKPOINTS = 3
_ROUND_DIR = re.compile(r"^round-(\d{4,})$")

AuditHook = Callable[[str, dict], None]


def _json_safe(value):
    """NaN and infinity become null: metrics.jsonl stays strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return finite_or_none(value)
    return value


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/round-NNNN`` directory, or None."""
    directory = out_dir / CHECKPOINT_DIR
    rounds = sorted((int(m.group(1)), d) for d in directory.glob("round-*") if (m := _ROUND_DIR.match(d.name)))
    return rounds[-1][1] if rounds else None


class FederationRun:
    """Drives the strategy round by round; owns the run's output directory."""

    def __init__(self, config: FederationConfig, *, num_rounds: int | None = None, resume: bool = False,
                 audit: AuditHook | None = None):
        self.config = config
        self.out_dir = Path(config.output_dir)
        self.num_rounds = num_rounds or config.federation.rounds
        self.audit = audit or (lambda event, fields: None)
        self.history: list[dict] = []
        self._known_nodes: set[int] = set()
        self.start_round = 1
        torch.manual_seed(config.seed)
        self.model = GenomicTransformer(config.model, tasks=config.tasks)
        if resume:
            self._resume()
        else:  # a fresh run starts a fresh history in this directory
            (self.out_dir / METRICS_FILE).unlink(missing_ok=True)
            shutil.rmtree(self.out_dir / FINAL_DIR, ignore_errors=True)
        self.central = self._load_central()
        fed = config.federation
        self.strategy = SpeciesFedAvg(
            aggregation=config.aggregation, min_train_institutions=fed.min_train_institutions,
            fraction_train=fed.fraction_train, fraction_evaluate=fed.fraction_evaluate,
            min_train_nodes=fed.min_train_institutions, min_evaluate_nodes=1 if fed.fraction_evaluate else 0,
            min_available_nodes=fed.min_available_institutions)

    def _resume(self) -> None:
        path = latest_checkpoint(self.out_dir)
        if path is None:
            log.warning("resume requested but %s holds no checkpoint: starting at round 1", self.out_dir)
            return
        checkpoint = load_checkpoint(path)
        if checkpoint.model_config != self.config.model or tuple(checkpoint.tasks) != tuple(self.config.tasks):
            raise CheckpointError(f"{path}: saved for another model or task list than {self.config.name}'s config")
        self.model.load_state_dict(checkpoint.weights, strict=True)
        self.history = list(checkpoint.state.get("metrics", []))
        self.start_round = checkpoint.round + 1
        self._rewrite_metrics()
        log.info("resumed from %s: next round %d", path, self.start_round)
        self.audit("resumed", {"checkpoint": str(path), "next_round": self.start_round})

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
        self.out_dir.mkdir(parents=True, exist_ok=True)
        arrays = ArrayRecord(self.model.state_dict())
        train_config = ConfigRecord({
            p.MODEL_CONFIG: json.dumps(self.config.model.to_dict()), p.TASKS: json.dumps(list(self.config.tasks)),
            p.TRAINING: self.config.training.model_dump_json(), p.RUN_NAME: self.config.name})
        self.audit("run_started", {"name": self.config.name, "rounds": self.num_rounds,
                                   "start_round": self.start_round})
        if self.start_round == 1 and not self.history:
            self._record(0, RoundRecord(), self.central_evaluation(), 0.0)
        timeout = self.config.federation.round_timeout_s
        for server_round in range(self.start_round, self.num_rounds + 1):
            started = time.monotonic()
            self.strategy.set_global(arrays)
            replies = grid.send_and_receive(self.strategy.configure_train(server_round, arrays, train_config, grid),
                                            timeout=timeout)
            arrays, _ = self.strategy.aggregate_train(server_round, replies)
            self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
            replies = grid.send_and_receive(
                self.strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(train_config)), grid),
                timeout=timeout)
            self.strategy.aggregate_evaluate(server_round, replies)
            record = self.strategy.rounds[server_round]
            self._record(server_round, record, self.central_evaluation(), time.monotonic() - started)
            self._checkpoint(server_round)
        self._finish()

    def central_evaluation(self) -> dict:
        batch = self.config.central_evaluation.batch_size
        return {task: evaluate(self.model, data, batch_size=batch, by_species=True)
                for task, data in self.central.items()}

    def _record(self, server_round: int, record: RoundRecord, central: dict, seconds: float) -> None:
        institutions = {r.institution: {k: v for k, v in asdict(r).items() if k not in ("institution", "node_id")}
                        for r in record.train}
        line = {"round": server_round, "central": central, "federated": record.evaluate,
                "institutions": institutions, "aggregation": record.aggregation,
                "examples": {name: sum(r["examples"].values()) for name, r in institutions.items()},
                "epsilon": {name: r["epsilon"] for name, r in institutions.items()},
                "refused": sorted(n for n, r in institutions.items() if r["status"] == "refused"),
                "rejected": {n: r["reason"] for n, r in institutions.items() if r["status"] == "rejected"},
                "failed": {n: r["reason"] for n, r in institutions.items() if r["status"] == "failed"},
                "wall_seconds": seconds}
        line = _json_safe(line)
        self.history.append(line)
        with (self.out_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._audit_round(server_round, record, seconds)

    def _audit_round(self, server_round: int, record: RoundRecord, seconds: float) -> None:
        for report in record.train:
            if report.node_id not in self._known_nodes and report.status != "failed":
                self._known_nodes.add(report.node_id)
                self.audit("institution_connected", {"node_id": report.node_id, "institution": report.institution,
                                                     "species": report.species})
            event = {"trained": "trained", "refused": "refused", "rejected": "update_rejected"}.get(
                report.status, "failed")
            self.audit(event, _json_safe({"round": server_round, "node_id": report.node_id,
                                          "institution": report.institution, "examples": report.examples,
                                          "epsilon": report.epsilon, "delta": report.delta,
                                          "reason": report.reason}))
        if server_round:
            self.audit("round_completed", {"round": server_round, "seconds": seconds,
                                           "accepted": sum(r.status == "trained" for r in record.train)})

    def _rewrite_metrics(self) -> None:
        atomic_write_text(self.out_dir / METRICS_FILE,
                          "".join(json.dumps(line, sort_keys=True) + "\n" for line in self.history))

    def _checkpoint(self, server_round: int) -> None:
        path = save_checkpoint(self.out_dir / CHECKPOINT_DIR / f"round-{server_round:04d}",
                               weights=self.model.state_dict(), model_config=self.config.model,
                               tasks=self.config.tasks, round=server_round,
                               state={"metrics": self.history, "config": self.config.model_dump(mode="json")})
        for old in sorted((self.out_dir / CHECKPOINT_DIR).glob("round-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        self.audit("checkpoint_written", {"round": server_round, "path": str(path)})

    def _finish(self) -> None:
        from server.report import write_report

        final = save_checkpoint(self.out_dir / FINAL_DIR, weights=self.model.state_dict(),
                                model_config=self.config.model, tasks=self.config.tasks,
                                round=self.num_rounds, state={"metrics": self.history[-1:]})
        report = write_report(self.out_dir, self.history, self.config, central=self.central)
        self.audit("run_finished", {"final": str(final), "report": str(report)})
