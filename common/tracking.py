"""TensorBoard event files, so ``tensorboard --logdir runs/`` shows a run as it goes.

Two writers, two owners: the server writes what it may know (central metrics per task and species,
federated metrics, ε per institution as reported) under ``<output_dir>/tensorboard``; each
institution's agent writes its own local-training curves (loss per task on its private batches, ε,
σ) under ``<state_dir>/tensorboard`` — on its own disk, never sent. Steps are rounds (or, for
``helixfed train``, epochs), so a resumed run continues its curves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

TENSORBOARD_DIR = "tensorboard"


class ScalarLog:
    """Scalars under ``directory``, flushed at every :meth:`write` (a reader may follow live)."""

    def __init__(self, directory: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when a run writes

        self.directory = Path(directory)
        self._writer = SummaryWriter(log_dir=str(self.directory))

    def write(self, step: int, scalars: Mapping[str, float | None]) -> None:
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(tag, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def central_scalars(central: Mapping[str, Mapping], federated: Mapping[str, Mapping],
                    epsilon: Mapping[str, float | None]) -> dict[str, float | None]:
    """A round's server-side scalars: ``central/<task>/<metric>/<species|all>``,
    ``federated/<task>/<metric>``, ``epsilon/<institution>``."""
    scalars: dict[str, float | None] = {}
    for task, metrics in central.items():
        for name, value in metrics.items():
            if name != "species":
                scalars[f"central/{task}/{name}/all"] = value
        for species, values in metrics.get("species", {}).items():
            for name, value in values.items():
                scalars[f"central/{task}/{name}/{species}"] = value
    for task, metrics in federated.items():
        for name, value in metrics.items():
            scalars[f"federated/{task}/{name}"] = value
    scalars.update({f"epsilon/{name}": value for name, value in epsilon.items()})
    return scalars
