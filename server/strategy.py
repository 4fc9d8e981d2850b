"""The Flower strategy: FedAvg's sampling and messaging, DESIGN.md's aggregation.

Every train reply is sorted into exactly one of: trained and accepted, refused (the institution's
budget is exhausted — recorded, not a failure), rejected (failed validation — logged with the
institution and the reason, never averaged), or failed (an error reply). Fewer accepted updates
than ``min_train_institutions`` is an error, not a silent no-op.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common import protocol as p
from common.config import AggregationSection
from common.finetuning import head_of
from common.protocol import InstitutionRound, Status
from server.aggregation import (
    AggregationError,
    Update,
    UpdateRejected,
    aggregate,
    validate_update,
)
from server.central_dp import CentralNoise, add_group_noise, clip_updates, institution_epsilon

log = logging.getLogger(__name__)

FITRES_METRICS = "fitres.metrics"  # where Flower's legacy FitRes keeps metrics: a secure reply's metadata


@dataclass
class InstitutionReport:
    """One institution's part in one round, as metrics.jsonl and the audit log record it."""

    node_id: int
    institution: str
    species: str
    status: Status  # TRAINED, REFUSED, REJECTED or FAILED
    examples: dict[str, int] = field(default_factory=dict)
    epsilon: float | None = None
    delta: float | None = None
    budget: float | None = None
    loss: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    accountant: str | None = None

    def as_round(self) -> InstitutionRound:
        """What metrics.jsonl keeps of it (the node id stays in the audit log)."""
        return InstitutionRound(species=self.species, status=self.status, examples=self.examples,
                                epsilon=self.epsilon, delta=self.delta, budget=self.budget, loss=self.loss,
                                reason=self.reason, accountant=self.accountant)


@dataclass
class RoundRecord:
    train: list[InstitutionReport] = field(default_factory=list)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)  # federated: task -> metrics
    aggregation: dict[str, dict[str, float]] = field(default_factory=dict)  # group -> institution -> w
    central_dp: dict = field(default_factory=dict)  # server/central_dp.py CentralNoise.to_json(), when on


def _float(metrics: MetricRecord, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


class SpeciesFedAvg(FedAvg):
    """Species-balanced, per-head FedAvg with validation of every update.

    ``reference`` is the current global model (set by :meth:`aggregate_train`'s caller through
    :meth:`set_global`); updates are checked against its names, shapes and dtypes.
    """

    def __init__(self, *, aggregation: AggregationSection, min_train_institutions: int,
                 expected_names: Callable[[Iterable[str]], set[str]] | None = None, **fedavg_args):
        """``expected_names(tasks)``: the parameters an institution that trained ``tasks`` must send
        (default: every parameter)."""
        super().__init__(**fedavg_args)
        self.aggregation = aggregation
        self.expected_names = expected_names
        self.min_train_institutions = min_train_institutions
        self.global_weights: dict[str, np.ndarray] = {}
        self.rounds: dict[int, RoundRecord] = {}
        # Each institution's largest ε reported so far in this run (restored on resume): ε is
        # cumulative, so a smaller one means the ledger was rolled back or edited.
        self.epsilon_seen: dict[str, tuple[float, int]] = {}
        # Institution-level DP (aggregation.central_dp): rounds noised so far in this run (restored on
        # resume) and noise from OS entropy, never from the run's seed.
        self.noised_rounds = 0
        self._noise = np.random.default_rng()
        self._current_round = 0

    def remember(self, history: Iterable) -> None:
        """Seed :attr:`epsilon_seen` and :attr:`noised_rounds` from a resumed run's metrics history."""
        for line in history:
            self.noised_rounds += bool(line.central_dp)
            for name, info in line.institutions.items():
                if info.epsilon is not None and info.epsilon > self.epsilon_seen.get(name, (-1.0, 0))[0]:
                    self.epsilon_seen[name] = (info.epsilon, line.round)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        # FedAvg sizes its sample from the nodes connected *before* it waits for the minimum, so
        # a slow institution could be left out of round 1: wait first, then sample.
        sample_nodes(grid, self.min_available_nodes, 0)
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        sample_nodes(grid, self.min_available_nodes, 0)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def set_global(self, arrays: ArrayRecord) -> None:
        self.global_weights = {k: v.numpy() for k, v in arrays.to_torch_state_dict().items()}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self.rounds.setdefault(server_round, RoundRecord())
        self._current_round = server_round
        updates = []
        for msg in replies:
            report, update = self._sort_reply(msg)
            record.train.append(report)
            if update is not None:
                updates.append(update)
        if len(updates) < self.min_train_institutions:
            summary = ", ".join(f"{r.institution}: {r.status}{' (' + r.reason + ')' if r.reason else ''}"
                                for r in record.train) or "no replies"
            raise AggregationError(f"round {server_round}: {len(updates)} usable updates, at least "
                                   f"{self.min_train_institutions} needed ({summary})")
        central = self.aggregation.central_dp
        if central is not None:
            updates, clipped = clip_updates(updates, self.global_weights, central.clip)
        weights, agg = aggregate(updates, self.global_weights, mode=self.aggregation.mode,
                                 species_weights=self.aggregation.species_weights)
        record.aggregation = agg.weights
        if central is not None:
            self._add_central_noise(record, weights, agg, clipped)
        arrays = ArrayRecord({k: _to_torch(v) for k, v in weights.items()})
        self.set_global(arrays)
        examples = sum(u.total_examples for u in updates)
        return arrays, MetricRecord({p.NUM_EXAMPLES: examples, "accepted": len(updates)})

    def _sort_reply(self, msg: Message) -> tuple[InstitutionReport, Update | None]:
        if msg.has_error():
            return self._failed(msg), None
        report, status_text = self._report(msg.metadata.src_node_id, msg.content.get(p.META) or {},
                                           msg.content.get(p.METRICS) or {})
        if not self._admissible(report, status_text, expected=Status.TRAINED):
            return report, None
        try:
            update = self._update_from(msg, report)
        except UpdateRejected as err:
            log.warning("rejected the update of %s: %s", report.institution, err)
            report.status, report.reason = Status.REJECTED, str(err)
            return report, None
        return report, update

    @staticmethod
    def _failed(msg: Message) -> InstitutionReport:
        name = f"node-{msg.metadata.src_node_id}"
        log.warning("reply from %s failed: %s", name, msg.error.reason)
        return InstitutionReport(msg.metadata.src_node_id, name, "unknown", Status.FAILED, reason=str(msg.error.reason))

    @staticmethod
    def _report(node_id: int, meta, metrics) -> tuple[InstitutionReport, str]:
        """The report a reply's metadata and numbers make, and the status text it claimed."""
        institution = str(meta.get(p.INSTITUTION, f"node-{node_id}"))
        status_text = str(meta.get(p.STATUS, ""))
        per_task = p.unflatten_task_metrics(metrics)
        accountant = meta.get(p.ACCOUNTANT)
        report = InstitutionReport(
            node_id, institution, str(meta.get(p.SPECIES, "unknown")),
            Status(status_text) if status_text in set(Status) else Status.REJECTED,
            examples={t: int(m.get(p.NUM_EXAMPLES, 0)) for t, m in per_task.items()},
            epsilon=_float(metrics, p.EPSILON), delta=_float(metrics, p.DELTA), budget=_float(metrics, p.BUDGET),
            loss={t: m[p.LOSS] for t, m in per_task.items() if p.LOSS in m}, reason=str(meta.get(p.REASON, "")),
            accountant=str(accountant) if accountant in ("rdp", "prv") else None)
        return report, status_text

    def _admissible(self, report: InstitutionReport, status_text: str, *, expected: Status) -> bool:
        """Whether a reply may go on to contribute: not failed or refused, its ε not rolled back, and
        the status ``expected`` (else the report becomes REJECTED, with the reason)."""
        if report.status == Status.FAILED:  # the agent caught its own error; the details stay in its log
            log.warning("reply from %s failed: %s", report.institution, report.reason)
            return False
        rolled_back = self._epsilon_went_down(report.institution, report.epsilon, trained=report.status == Status.TRAINED)
        if report.status == Status.REFUSED and not rolled_back:
            log.info("%s refused to train: %s", report.institution, report.reason)
            return False
        reason = rolled_back or ("" if status_text == expected else
                                 f"{report.institution}: unexpected status {status_text!r}")
        if reason:
            log.warning("rejected the update of %s: %s", report.institution, reason)
            report.status, report.reason = Status.REJECTED, reason
            return False
        return True

    # -- secure rounds (server/secure_aggregation.py) ---------------------------------------------

    def sort_descriptions(self, server_round: int, replies: Iterable[Message]) -> dict[int, tuple[str, str, dict]]:
        """A secure round's describe replies: the ready institutions (node id -> institution, species,
        records per task); refusals, rejections and failures go into the round record."""
        record = self.rounds.setdefault(server_round, RoundRecord())
        self._current_round = server_round
        ready = {}
        for msg in replies:
            if msg.has_error():
                record.train.append(self._failed(msg))
                continue
            report, status_text = self._report(msg.metadata.src_node_id, msg.content.get(p.META) or {},
                                               msg.content.get(p.METRICS) or {})
            if self._admissible(report, status_text, expected=Status.READY):
                if not report.examples or min(report.examples.values()) < 0:
                    report.status, report.reason = Status.REJECTED, f"{report.institution}: no per-task record counts"
                else:
                    ready[report.node_id] = (report.institution, report.species, report.examples)
                    continue
            record.train.append(report)
        return ready

    def screen_secure(self, node_id: int, content) -> InstitutionReport:
        """The report of a masked vector's metadata, checked before the vector may enter a sum (the
        sum cannot be taken apart later): TRAINED when it may, else REJECTED with the reason."""
        try:
            metrics = json.loads(str(content.config_records[FITRES_METRICS][p.METRICS]))
            meta = json.loads(str(content.config_records[FITRES_METRICS][p.META]))
            report, status_text = self._report(node_id, meta, metrics)
        except (KeyError, TypeError, ValueError) as err:
            return InstitutionReport(node_id, f"node-{node_id}", "unknown", Status.REJECTED,
                                     reason=f"unreadable metadata with its masked update ({type(err).__name__})")
        self._admissible(report, status_text, expected=Status.TRAINED)
        return report

    def aggregate_secure(self, server_round: int, result) -> ArrayRecord:
        """The round record and new global weights of a finished secure round (``result``: a SecureSum):
        the institutions in the sum trained, those screened out are rejected, and those that were ready
        but sent nothing that counts dropped out (FAILED)."""
        record = self.rounds.setdefault(server_round, RoundRecord())
        record.train.extend(result.trained + result.rejected)
        counted = {r.node_id for r in result.trained + result.rejected}
        self.drop_out(server_round, {n: v for n, v in result.ready.items() if n not in counted},
                      "left the secure aggregation protocol")
        record.aggregation = result.report.weights
        weights = result.weights
        if self.aggregation.central_dp is not None:  # each institution clipped its own update before masking
            self._add_central_noise(record, weights, result.report, clipped=())
        arrays = ArrayRecord({k: _to_torch(v) for k, v in weights.items()})
        self.set_global(arrays)
        return arrays

    def drop_out(self, server_round: int, ready: dict[int, tuple[str, str, dict]], reason: str) -> None:
        """Record ready institutions whose update is in no sum this round as FAILED, with ``reason``."""
        record = self.rounds.setdefault(server_round, RoundRecord())
        for node_id, (institution, species, _) in ready.items():
            record.train.append(InstitutionReport(node_id, institution, species, Status.FAILED, reason=reason))

    def _add_central_noise(self, record: RoundRecord, weights, report, clipped: tuple[str, ...]) -> None:
        central = self.aggregation.central_dp
        stds = add_group_noise(weights, report, noise_multiplier=central.noise_multiplier, clip=central.clip,
                               rng=self._noise)
        self.noised_rounds += 1
        epsilon = institution_epsilon(noise_multiplier=central.noise_multiplier, rounds=self.noised_rounds,
                                      delta=central.delta)
        record.central_dp = CentralNoise(central.noise_multiplier, central.clip, clipped, stds, epsilon,
                                         central.delta).to_json()

    def _update_from(self, msg: Message, report: InstitutionReport) -> Update:
        arrays = msg.content.get(p.ARRAYS)
        if arrays is None:
            raise UpdateRejected(f"{report.institution}: reply holds no weights")
        if not report.examples or min(report.examples.values()) < 0:
            raise UpdateRejected(f"{report.institution}: no per-task example counts")
        unknown = sorted(set(report.examples) - {head_of(n) for n in self.global_weights} - {None})
        if unknown:
            raise UpdateRejected(f"{report.institution}: trained tasks {unknown} the model has no head for")
        weights = {k: v.numpy() for k, v in arrays.items()}
        expected = self.expected_names(report.examples) if self.expected_names else None
        validate_update(weights, self.global_weights, institution=report.institution,
                        max_update_norm=self.aggregation.max_update_norm, expected=expected)
        return Update(report.institution, report.species, weights, report.examples)

    def _epsilon_went_down(self, institution: str, epsilon: float | None, *, trained: bool) -> str:
        """The reason to reject a reply whose cumulative ε is below one this institution reported
        before in this run — or, for a round it says it trained, not above it: every DP round spends
        something, so an equal ε after training means the ledger was restored to an earlier state
        ("" when all is well); otherwise remember the new largest ε."""
        if epsilon is None or not np.isfinite(epsilon):
            return ""
        seen, seen_round = self.epsilon_seen.get(institution, (-1.0, 0))
        if epsilon < seen - 1e-9 or (trained and epsilon <= seen):
            log.error("%s reports epsilon %.6f, below the %.6f it reported in round %d", institution, epsilon,
                      seen, seen_round)
            relation = "is below" if epsilon < seen - 1e-9 else "after training is not above"
            return (f"{institution}: cumulative epsilon {epsilon:.6f} {relation} the {seen:.6f} it reported in "
                    f"round {seen_round}: its privacy ledger was rolled back or edited")
        self.epsilon_seen[institution] = (epsilon, self._current_round)
        return ""

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Federated evaluation: per task, example-weighted means of the institutions' metrics."""
        totals: dict[str, dict[str, float]] = {}
        counts: dict[str, float] = {}
        for msg in replies:
            if msg.has_error():
                log.warning("evaluation reply from node %s failed: %s", msg.metadata.src_node_id,
                            msg.error.reason)
                continue
            for task, metrics in p.unflatten_task_metrics(msg.content.get(p.METRICS) or {}).items():
                n = metrics.get(p.NUM_EXAMPLES, 0.0)
                counts[task] = counts.get(task, 0.0) + n
                for key, value in metrics.items():
                    if key != p.NUM_EXAMPLES and np.isfinite(value):
                        totals.setdefault(task, {}).setdefault(key, 0.0)
                        totals[task][key] += n * value
        per_task = {t: {k: v / counts[t] for k, v in m.items()} for t, m in totals.items() if counts[t] > 0}
        for task in per_task:
            per_task[task][p.NUM_EXAMPLES] = counts[task]
        self.rounds.setdefault(server_round, RoundRecord()).evaluate = per_task
        return MetricRecord(p.flatten_task_metrics(per_task)) if per_task else None


def _to_torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))
