"""The run's checkpoints: ``checkpoints/round-NNNN`` after every round (the newest few kept, for
``--resume``) and ``final/`` at the end. Each is a :mod:`common.checkpoint` directory, written
atomically; a round checkpoint carries the metrics history so a resumed run restores it whole."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

from common.checkpoint import PRIVATE_STARTS, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from common.config import FederationConfig
from common.model import GenomicTransformer
from common.model_card import federation_card
from common.protocol import RoundMetrics, Status, institution_summaries

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
KEEP_CHECKPOINTS = 3
_ROUND_DIR = re.compile(r"^round-(\d{4,})$")


def trained_privacy(history: list[RoundMetrics], *, start: str | None = None) -> dict:
    """Whether every update averaged into the model was trained under DP (a finite budget) from a
    start that was DP or public (``start``: the init checkpoint's privacy, None from scratch), so
    that a model built from anything else is never served as private (server/service/security.py)."""
    budgets = [r.budget for line in history for r in line.institutions.values() if r.status == Status.TRAINED]
    start_ok = start is None or start in PRIVATE_STARTS
    return {"dp": (start_ok and all(b is not None and math.isfinite(b) for b in budgets)) if budgets else None,
            "start": start,
            "institutions_trained": sorted({n for line in history for n, r in line.institutions.items()
                                            if r.status == Status.TRAINED})}


def training_summary(config: FederationConfig) -> str:
    """The model card's line on how the federation trained (the settings that change what it learns)."""
    t = config.training
    parts = [f"{t.local_epochs} local epoch(s) per round, logical batch {t.batch_size}, {t.optimizer} at "
             f"learning rate {t.learning_rate} ({t.lr_schedule}), {t.clipping} clipping, trainable: {t.trainable}"]
    if t.label_smoothing:
        parts.append(f"label smoothing {t.label_smoothing:g}")
    if t.weights_after_clipping:
        parts.append("weights after clipping " + ", ".join(
            f"{task} {list(weights)}" for task, weights in sorted(t.weights_after_clipping.items())))
    if t.kmer_path_lr_scale:
        parts.append("k-mer path learning rate x " + ", ".join(
            f"{task} {scale:g}" for task, scale in sorted(t.kmer_path_lr_scale.items())))
    parts.append(f"aggregation {config.aggregation.mode}")
    parts.append(f"started from {config.init_checkpoint.name}" if config.init_checkpoint else "from scratch")
    return "; ".join(parts)


class RunCheckpoints:
    """Where one run's checkpoints live and how many are kept."""

    def __init__(self, out_dir: Path, *, keep: int = KEEP_CHECKPOINTS, start_privacy: str | None = None):
        self.start_privacy = start_privacy  # the init checkpoint's privacy (None: from scratch)
        self.directory = Path(out_dir) / CHECKPOINT_DIR
        self.final_dir = Path(out_dir) / FINAL_DIR
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest complete ``round-NNNN`` directory, or None."""
        rounds = sorted((int(m.group(1)), d) for d in self.directory.glob("round-*")
                        if (m := _ROUND_DIR.match(d.name)))
        return rounds[-1][1] if rounds else None

    def load_latest_for(self, config: FederationConfig) -> tuple[Checkpoint, list[RoundMetrics]] | None:
        """The newest checkpoint and its metrics history, or None when there is none.

        Raises:
            CheckpointError: it was saved for another model or task list than ``config``'s.
        """
        path = self.latest()
        if path is None:
            return None
        checkpoint = load_checkpoint(path)
        if checkpoint.model_config != config.model or tuple(checkpoint.tasks) != tuple(config.tasks):
            raise CheckpointError(f"{path}: saved for another model or task list than {config.name}'s config")
        history = [RoundMetrics.from_json(line) for line in checkpoint.state.get("metrics", [])]
        return checkpoint, history

    def _card(self, config: FederationConfig, history: list[RoundMetrics], privacy: dict,
              baselines: tuple[dict | None, dict | None] = (None, None)) -> str:
        return federation_card(name=config.name, model_config=config.model, tasks=config.tasks, history=history,
                               privacy=privacy, training=training_summary(config), baseline=baselines[0],
                               dp_baseline=baselines[1])

    def _state(self, config: FederationConfig, history: list[RoundMetrics], metrics: list[RoundMetrics]) -> dict:
        """What a checkpoint records of its run: the metrics (all rounds for resuming, the last for
        final/), the run config, the privacy provenance with each institution's last reported spend, and
        the data each institution trained on (species, records per task) — nothing the server may not know."""
        privacy = trained_privacy(history, start=self.start_privacy)
        summaries = institution_summaries(history)
        spent = {name: {"epsilon": s.epsilon, "delta": s.delta, "budget": s.budget, "accountant": s.accountant}
                 for name, s in summaries.items() if s.epsilon is not None}
        data = {name: {"species": s.species, "records": s.examples} for name, s in summaries.items()
                if s.rounds_trained}
        return {"metrics": [line.to_json() for line in metrics], "config": config.model_dump(mode="json"),
                "privacy": {**privacy, "institutions": spent}, "data": data}

    def save_round(self, model: GenomicTransformer, config: FederationConfig, server_round: int,
                   history: list[RoundMetrics]) -> Path:
        """Write ``round-NNNN`` and drop all but the newest ``keep``."""
        state = self._state(config, history, history)
        path = save_checkpoint(self.directory / f"round-{server_round:04d}", weights=model.state_dict(),
                               model_config=config.model, tasks=config.tasks, round=server_round, state=state,
                               card=self._card(config, history, state["privacy"]))
        for old in sorted(self.directory.glob("round-*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def save_final(self, model: GenomicTransformer, config: FederationConfig, server_round: int,
                   history: list[RoundMetrics], *, baselines: tuple[dict | None, dict | None] = (None, None)) -> Path:
        state = self._state(config, history, history[-1:])
        return save_checkpoint(self.final_dir, weights=model.state_dict(), model_config=config.model,
                               tasks=config.tasks, round=server_round, state=state,
                               card=self._card(config, history, state["privacy"], baselines))

    def forget_final(self) -> None:
        """A fresh run must not leave an older run's model looking like its result."""
        shutil.rmtree(self.final_dir, ignore_errors=True)

