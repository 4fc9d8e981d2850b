"""Model checkpoints on disk: weights + model config + tasks + free-form JSON state.

A checkpoint is a directory holding ``weights.pt`` (a plain tensor dict, loaded with
``weights_only=True`` so nothing is ever unpickled) and ``checkpoint.json`` (format version,
model config, tasks, round, the weights' sha256, and whatever state the writer adds). It is
written to a temporary sibling directory, fsynced and renamed into place, so a crash leaves the
previous checkpoint or the new one, never half of one. Loading refuses an architecture mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from common.atomic import fsync_directory
from common.finetuning import head_of, is_adapter
from common.model import GenomicTransformer, ModelConfig, ModelConfigError
from common.tasks import TASKS, declare_tasks, declared_tasks

FORMAT = "helixfed-checkpoint"
VERSION = 1
WEIGHTS_FILE = "weights.pt"
META_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not fit the model; names the path."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    model_config: ModelConfig
    tasks: tuple[str, ...]
    round: int
    state: dict
    weights: dict[str, torch.Tensor]

    def build_model(self) -> GenomicTransformer:
        """The model with these weights, in eval mode."""
        model = GenomicTransformer(self.model_config, tasks=self.tasks)
        try:
            model.load_state_dict(self.weights, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{self.path}: weights do not fit the model config: {err}") from err
        return model.eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(path: str | Path, *, weights: dict[str, torch.Tensor], model_config: ModelConfig,
                    tasks: tuple[str, ...], round: int, state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (replacing an existing one at ``path``)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    os.chmod(staging, 0o700)  # mkdir's mode is masked by the umask; a model of private data is not for others
    torch.save({k: v.detach().cpu().contiguous() for k, v in weights.items()}, staging / WEIGHTS_FILE)
    meta = {"format": FORMAT, "version": VERSION, "model": model_config.to_dict(), "tasks": list(tasks),
            "task_declarations": declared_tasks(tasks),  # a model serves exactly its tasks, built-in or declared
            "round": int(round), "weights_sha256": _sha256(staging / WEIGHTS_FILE), "state": state or {}}
    (staging / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, allow_nan=True))
    for name in (WEIGHTS_FILE, META_FILE):
        os.chmod(staging / name, 0o600)
        _fsync_file(staging / name)
    fsync_directory(staging)
    if path.exists():  # rename the old one away first: os.replace cannot replace a non-empty dir
        retired = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(retired, ignore_errors=True)
        path.rename(retired)
        staging.rename(path)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(path)
    fsync_directory(path.parent)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint directory.

    Raises:
        CheckpointError: missing files, unreadable or mismatched metadata, a weights file whose
            checksum does not match, or a model config that cannot build a model.
    """
    path = Path(path)
    meta_path, weights_path = path / META_FILE, path / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (expected {META_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path}: not a {FORMAT} version {VERSION} file")
    if _sha256(weights_path) != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path}: checksum mismatch (file corrupt or replaced)")
    try:
        declare_tasks(meta.get("task_declarations") or {})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{meta_path}: its declared tasks clash with this process's: {err}") from err
    try:
        model_config = ModelConfig.from_dict(meta["model"])
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (KeyError, TypeError, ModelConfigError) as err:
        raise CheckpointError(f"{meta_path}: bad model config: {err}") from err
    except Exception as err:  # torch raises several types for a damaged or unsafe pickle
        raise CheckpointError(f"{weights_path}: cannot load weights: {err}") from err
    tasks, round_, state = _checked_meta(meta_path, meta)
    _check_weights(weights_path, weights)
    return Checkpoint(path, model_config, tasks, round_, state, weights)


def _checked_meta(meta_path: Path, meta: dict) -> tuple[tuple[str, ...], int, dict]:
    tasks, round_, state = meta.get("tasks"), meta.get("round"), meta.get("state", {})
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise CheckpointError(f"{meta_path}: 'tasks' must be a non-empty list of task names, got {tasks!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise CheckpointError(f"{meta_path}: tasks {unknown} are neither built in nor declared in the checkpoint")
    if not isinstance(round_, int) or isinstance(round_, bool) or round_ < 0:
        raise CheckpointError(f"{meta_path}: 'round' must be an integer >= 0, got {round_!r}")
    if not isinstance(state, dict):
        raise CheckpointError(f"{meta_path}: 'state' must be an object, got {type(state).__name__}")
    return tuple(tasks), round_, state


def _check_weights(weights_path: Path, weights) -> None:
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"{weights_path}: expected a mapping of parameter names to tensors, got "
                              f"{type(weights).__name__}")
    bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:  # a valid checksum only says the file is as written; NaN weights would serve NaN predictions
        raise CheckpointError(f"{weights_path}: non-finite values in {', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}; refusing to load")


def load_model(path: str | Path) -> tuple[GenomicTransformer, Checkpoint]:
    """A ready-to-use model (eval mode) from a checkpoint directory."""
    checkpoint = load_checkpoint(path)
    return checkpoint.build_model(), checkpoint


def start_from(model: GenomicTransformer, path: Path | Checkpoint) -> list[str]:
    """Load a checkpoint (``model.init_checkpoint``: a pre-trained backbone, or an earlier
    federation's model) into ``model``: the whole backbone must fit; heads and adapters are taken
    where the checkpoint has them with the same shape, and start fresh otherwise.

    Returns:
        the names of the parameters that start fresh.

    Raises:
        CheckpointError: an unreadable checkpoint, or one whose backbone does not fit ``model``.
    """
    checkpoint = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    own = model.state_dict()
    fits = {n: w for n, w in checkpoint.weights.items() if n in own and tuple(w.shape) == tuple(own[n].shape)}
    misfits = sorted(n for n in own if head_of(n) is None and not is_adapter(n) and n not in fits)
    if misfits:
        raise CheckpointError(f"{path}: its backbone does not fit the federation's model (saved with "
                              f"{checkpoint.model_config}): {', '.join(misfits[:5])}{' …' if len(misfits) > 5 else ''}")
    model.load_state_dict(fits, strict=False)
    return sorted(set(own) - set(fits))


# ---------------------------------------------------------------- provenance

PRIVATE_STARTS = ("dp", "public")  # a start that keeps a DP fine-tune DP


def checkpoint_privacy(checkpoint: Checkpoint) -> str:
    """What a checkpoint's weights may reveal: ``dp`` (trained only with DP on private data, from a
    start that was DP or public), ``non-dp``, ``public`` (pre-trained on public sequence) or
    ``unknown`` (written before checkpoints recorded it)."""
    state = checkpoint.state or {}
    local = state.get("local_training")
    if isinstance(local, dict) and "dp" in local:
        return "dp" if local["dp"] else "non-dp"
    if "pretraining" in state:  # server/pretraining.py: public FASTA only
        return "public"
    recorded = state.get("privacy")  # a federation's checkpoints (server/checkpoints.py trained_privacy)
    if isinstance(recorded, dict) and recorded.get("dp") is not None:
        return "dp" if recorded["dp"] else "non-dp"
    return "unknown"
