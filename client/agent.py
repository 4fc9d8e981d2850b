"""The institution agent's logic between Flower and the trainer: budget gate, DP training,
ledger, evaluation. Plain Python; ``client/app.py`` only moves messages in and out of it."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from client.privacy.ledger import BudgetExhausted, PrivacyLedger
from client.trainer import (
    RoundResult,
    planned_segments,
    resolve_device,
    seed_everything,
    state_dict_cpu,
    train_round,
)
from common import protocol as p
from common.config import InstitutionConfig, TrainingConfig
from common.data.dataset import GenomicDataset
from common.data.institution import load_institution_data, load_institution_splits
from common.evaluation import evaluate
from common.finetuning import trainable_names
from common.model import GenomicTransformer
from common.protocol import Status
from common.tracking import TENSORBOARD_DIR, ScalarLog

log = logging.getLogger(__name__)



@dataclass
class TrainOutcome:
    """What an institution reports after a round: weights only when it trained."""

    status: Status  # TRAINED or REFUSED (budget exhausted); READY from readiness(). A failure is an exception
    epsilon: float  # cumulative epsilon after this round (or now, when refused)
    delta: float
    budget: float
    examples: dict[str, int] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    noise_multiplier: float = 0.0
    weights: dict[str, torch.Tensor] | None = None
    reason: str = ""


def reported(agent: InstitutionAgent, outcome: TrainOutcome) -> tuple[dict, dict]:
    """What a training reply says besides the update, plain or secure: (numbers, metadata).

    Record counts per task are disclosed metadata (the README's privacy model); the training loss,
    computed on raw private batches, stays here: nothing leaves that the ledger does not cover."""
    numbers = {p.NUM_EXAMPLES: sum(outcome.examples.values()), p.EPSILON: outcome.epsilon,
               p.DELTA: outcome.delta, p.BUDGET: outcome.budget, p.REFUSED: float(outcome.status == Status.REFUSED),
               p.NOISE_MULTIPLIER: outcome.noise_multiplier,
               **p.flatten_task_metrics({t: {p.NUM_EXAMPLES: n} for t, n in outcome.examples.items()})}
    meta = {p.INSTITUTION: agent.config.name, p.SPECIES: agent.config.species, p.STATUS: str(outcome.status),
            p.REASON: outcome.reason}
    if agent.ledger is not None:  # what the reported ε means; public configuration, not data
        meta[p.ACCOUNTANT] = agent.ledger.accountant
    return numbers, meta


class InstitutionAgent:
    """One institution: its config, data, ledger and device. Loads data once and keeps it."""

    def __init__(self, config: InstitutionConfig, *, federation_training: TrainingConfig | None = None):
        self.config = config
        self.training = config.training or federation_training or TrainingConfig()
        if federation_training is not None:  # what trains is the federation's model's property
            self.training = self.training.model_copy(update={"trainable": federation_training.trainable})
        self.device = resolve_device(config.device)
        self._data: dict[str, dict[str, GenomicDataset]] = {}
        self._scalars: ScalarLog | None = None  # local-training curves, opened with the first round
        self.ledger = self._open_ledger() if config.privacy.enabled else None

    def _open_ledger(self) -> PrivacyLedger:
        privacy = self.config.privacy
        return PrivacyLedger.open(self.config.state_dir, institution=self.config.name,
                                  budget_epsilon=privacy.epsilon, delta=privacy.delta,
                                  accountant=privacy.accountant, key_file=privacy.ledger_key)

    def data(self, split: str) -> dict[str, GenomicDataset]:
        if split not in self._data:
            max_len = self.training.max_len
            loaded = (load_institution_splits(self.config, max_len=max_len) if self.config.data is not None
                      else {split: load_institution_data(self.config, split=split, max_len=max_len)})
            if "train" in loaded:  # own files are read and split once, all splits together
                self._check_delta(loaded["train"])
            self._data.update(loaded)
        return self._data[split]

    def _check_delta(self, train: dict[str, GenomicDataset]) -> None:
        records = sum(len(d) for d in train.values())
        delta = self.config.privacy.delta
        if self.config.privacy.enabled and delta >= 1.0 / records:
            raise ValueError(f"institution {self.config.name}: privacy.delta {delta:g} must be below "
                             f"1/records = 1/{records}; a delta that large can reveal whole records")

    def noise_multiplier(self, train: dict[str, GenomicDataset]) -> float:
        """The fixed sigma, or the sigma that lets the planned rounds still to come fit the budget."""
        privacy = self.config.privacy
        if privacy.noise_multiplier is not None:
            return privacy.noise_multiplier
        done = len(self.ledger.rounds)
        remaining = max(privacy.planned_rounds - done, 1)
        shape = [(q, steps) for _, q, steps in planned_segments(train, self.training, 1.0)]
        return self.ledger.plan_noise_multiplier(round_shape=shape, rounds=remaining)

    def train(self, model: GenomicTransformer, *, run_id: str, server_round: int,
              num_rounds: int | None = None, attempt: int = 1) -> TrainOutcome:
        """Train one round on every task held, unless its steps would pass the budget.

        ``num_rounds``: the federation's rounds, so round ``server_round`` takes its part of the
        learning-rate schedule (None: each round runs the whole schedule). ``attempt``: a secure round
        tried again trains with a fresh seed, so two sums over different institutions never hold the
        same update (their difference would be the update of whoever is in one only).
        """
        train = self.data("train")
        seed_everything(self.training.seed + 1009 * server_round + 7919 * (attempt - 1))
        progress = ((server_round - 1) / num_rounds, server_round / num_rounds) if num_rounds else (0.0, 1.0)
        if self.ledger is None:
            result = self._run(model, train, dp=False, sigma=0.0, progress=progress)
            outcome = self._outcome(Status.TRAINED, result, math.inf, 0.0, math.inf, model)
            self._track(server_round, outcome)
            return outcome
        privacy = self.config.privacy
        sigma, check = self._budget(train)
        if not check.allowed:
            log.warning("%s: budget exhausted (epsilon %.3f of %.3f; this round would reach %.3f)",
                        self.config.name, check.current, privacy.epsilon, check.projected)
            return self._refusal(check)
        result = self._run(model, train, dp=True, sigma=sigma, progress=progress)
        self.ledger.record_round(run_id=run_id, round=server_round, segments=result.segments)
        outcome = self._outcome(Status.TRAINED, result, self.ledger.epsilon(), privacy.delta, privacy.epsilon,
                                model, sigma)
        self._track(server_round, outcome)
        return outcome

    def _budget(self, train: dict[str, GenomicDataset]):
        """This round's sigma and the ledger's verdict on spending it (a BudgetCheck)."""
        try:
            sigma = self.noise_multiplier(train)
        except BudgetExhausted as exhausted:  # no sigma lets even one more round fit
            return 0.0, exhausted.check
        return sigma, self.ledger.check_budget(segments=planned_segments(train, self.training, sigma))

    def _refusal(self, check) -> TrainOutcome:
        return self.refusal(f"budget exhausted: epsilon {check.current:.4f} of {self.config.privacy.epsilon:g}, "
                            f"next round would reach {check.projected:.4f}")

    def refusal(self, reason: str) -> TrainOutcome:
        """A round this institution will not train, and why (its ε as it stands)."""
        privacy = self.config.privacy
        return TrainOutcome(Status.REFUSED, self.epsilon(), privacy.delta, privacy.epsilon, reason=reason)

    def readiness(self) -> TrainOutcome:
        """Whether this institution would train the next round, and on how many records of each task,
        without training or spending anything (what a secure round asks first). READY or REFUSED."""
        train = self.data("train")
        examples = {task: len(data) for task, data in train.items()}
        if self.ledger is None:
            return TrainOutcome(Status.READY, math.inf, 0.0, math.inf, examples=examples)
        _, check = self._budget(train)
        if not check.allowed:
            return self._refusal(check)
        privacy = self.config.privacy
        return TrainOutcome(Status.READY, self.ledger.epsilon(), privacy.delta, privacy.epsilon, examples=examples)

    def _track(self, step: int, outcome: TrainOutcome) -> None:
        """Local-training curves for this institution's own eyes (never sent): loss per task on its
        private batches, ε and σ, under ``<state_dir>/tensorboard``."""
        if self.config.state_dir is None:
            return
        if self._scalars is None:
            self._scalars = ScalarLog(self.config.state_dir / TENSORBOARD_DIR)
        self._scalars.write(step, {**{f"local/loss/{task}": loss for task, loss in outcome.losses.items()},
                                   "local/epsilon": outcome.epsilon, "local/noise_multiplier": outcome.noise_multiplier})

    def _run(self, model: GenomicTransformer, train: dict[str, GenomicDataset], *, dp: bool,
             sigma: float, progress: tuple[float, float]) -> RoundResult:
        privacy = self.config.privacy
        return train_round(model, train, training=self.training, dp=dp, noise_multiplier=sigma,
                           max_grad_norm=privacy.max_grad_norm, accountant=privacy.accountant,
                           device=self.device, progress=progress)

    def _outcome(self, status, result, epsilon, delta, budget, model, sigma=0.0) -> TrainOutcome:
        # Only what this round trained leaves: the trainable tensors of the tasks held.
        sent = trainable_names(model, mode=self.training.trainable, tasks=result.tasks)
        return TrainOutcome(status, epsilon, delta, budget,
                            examples={t: r.examples for t, r in result.tasks.items()},
                            losses={t: r.mean_loss for t, r in result.tasks.items()},
                            noise_multiplier=sigma, weights=state_dict_cpu(model, sent))

    def evaluate(self, model: GenomicTransformer, *, split: str = "test") -> dict[str, dict]:
        """Metrics per task on the institution's own held-out split (aggregates only)."""
        model.to(self.device)
        return {task: evaluate(model, data, device=self.device)
                for task, data in self.data(split).items()}

    def epsilon(self) -> float:
        return self.ledger.epsilon() if self.ledger else math.inf

