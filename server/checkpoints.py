"""The run's checkpoints: ``checkpoints/round-NNNN`` after every round (the newest few kept, for
``--resume``) and ``final/`` at the end. Each is a :mod:`common.checkpoint` directory, written
atomically; a round checkpoint carries the metrics history so a resumed run restores it whole."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from common.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from common.config import FederationConfig
from common.model import GenomicTransformer
from common.protocol import RoundMetrics

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
KEEP_CHECKPOINTS = 3
_ROUND_DIR = re.compile(r"^round-(\d{4,})$")


class RunCheckpoints:
    """Where one run's checkpoints live and how many are kept."""

    def __init__(self, out_dir: Path, *, keep: int = KEEP_CHECKPOINTS):
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

    def save_round(self, model: GenomicTransformer, config: FederationConfig, server_round: int,
                   history: list[RoundMetrics]) -> Path:
        """Write ``round-NNNN`` and drop all but the newest ``keep``."""
        path = save_checkpoint(self.directory / f"round-{server_round:04d}", weights=model.state_dict(),
                               model_config=config.model, tasks=config.tasks, round=server_round,
                               state={"metrics": [line.to_json() for line in history],
                                      "config": config.model_dump(mode="json")})
        for old in sorted(self.directory.glob("round-*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def save_final(self, model: GenomicTransformer, config: FederationConfig, server_round: int,
                   last: RoundMetrics | None) -> Path:
        return save_checkpoint(self.final_dir, weights=model.state_dict(), model_config=config.model,
                               tasks=config.tasks, round=server_round,
                               state={"metrics": [last.to_json()] if last else []})

    def forget_final(self) -> None:
        """A fresh run must not leave an older run's model looking like its result."""
        shutil.rmtree(self.final_dir, ignore_errors=True)

