"""Model checkpoints on disk, laid out the way Hugging Face users expect.

A checkpoint is a directory holding
- ``model.safetensors``: the weights (safetensors: tensors only, so loading never unpickles code);
- ``config.json``: the model config and the task registry (the tasks, with the declarations of
  those that are not built in), all that is needed to build the model;
- ``checkpoint.json``: format version, round, the weights' sha256, and whatever state the writer
  adds (a federation's metrics history, run config, privacy provenance);
- ``README.md``: a model card (:mod:`common.model_card`).

It is written to a temporary sibling directory, fsynced and renamed into place, so a crash leaves
the previous checkpoint or the new one, never half of one. Loading refuses an architecture
mismatch, non-finite weights, and checkpoints of older versions (``weights.pt``, a pickle) or of
other programs, with an error that says which. ``GenomicTransformer.save_pretrained`` /
``from_pretrained`` wrap these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.atomic import fsync_directory
from common.finetuning import head_of, is_adapter
from common.model import GenomicTransformer, ModelConfig, ModelConfigError
from common.tasks import TASKS, declare_tasks, declared_tasks

FORMAT = "helixfed-checkpoint"
VERSION = 2  # 1: weights.pt (a pickle) with the model config in checkpoint.json; no longer read
MODEL_TYPE = "helixfed-genomic-transformer"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "checkpoint.json"
CARD_FILE = "README.md"
_VERSION_1_WEIGHTS = "weights.pt"


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
                    tasks: tuple[str, ...], round: int, state: dict | None = None,
                    card: str | None = None) -> Path:
    """Write a checkpoint directory atomically (replacing an existing one at ``path``).

    ``card``: the model card's markdown; default a card built from what the checkpoint holds."""
    from common.model_card import basic_card

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    os.chmod(staging, 0o700)  # mkdir's mode is masked by the umask; a model of private data is not for others
    # clone: safetensors refuses tensors sharing storage (tied weights, views)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in weights.items()}, str(staging / WEIGHTS_FILE),
              metadata={"format": "pt"})
    config = {"model_type": MODEL_TYPE, "model": model_config.to_dict(), "tasks": list(tasks),
              "task_declarations": declared_tasks(tasks)}  # a model serves exactly its tasks, built-in or declared
    meta = {"format": FORMAT, "version": VERSION, "round": int(round),
            "weights_sha256": _sha256(staging / WEIGHTS_FILE), "state": state or {}}
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
    (staging / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, allow_nan=True))
    (staging / CARD_FILE).write_text(card if card is not None else
                                     basic_card(model_config=model_config, tasks=tuple(tasks), round=int(round),
                                                state=state or {}))
    for name in (WEIGHTS_FILE, CONFIG_FILE, META_FILE, CARD_FILE):
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


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: unreadable {what}: {err}") from err
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: unreadable {what}: expected a JSON object, got {type(value).__name__}")
    return value


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint directory.

    Raises:
        CheckpointError: missing files, an older or foreign checkpoint, unreadable or mismatched
            metadata, a weights file whose checksum does not match, non-finite weights, or a model
            config that cannot build a model.
    """
    path = Path(path)
    meta_path, config_path, weights_path = path / META_FILE, path / CONFIG_FILE, path / WEIGHTS_FILE
    if (path / _VERSION_1_WEIGHTS).is_file() and not weights_path.is_file():
        raise CheckpointError(f"{path}: a checkpoint of an older helixfed (version 1: {_VERSION_1_WEIGHTS}, a "
                              f"pickle); this version reads only {WEIGHTS_FILE} checkpoints: train or pre-train "
                              "it again")
    if not meta_path.is_file() or not weights_path.is_file() or not config_path.is_file():
        raise CheckpointError(f"{path}: not a helixfed checkpoint (expected {WEIGHTS_FILE}, {CONFIG_FILE} and "
                              f"{META_FILE})")
    meta = _read_json(meta_path, "checkpoint metadata")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path}: not a {FORMAT} version {VERSION} file (format {meta.get('format')!r}, "
                              f"version {meta.get('version')!r})")
    config = _read_json(config_path, "model config")
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{config_path}: model_type {config.get('model_type')!r} is not {MODEL_TYPE!r}")
    if _sha256(weights_path) != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path}: checksum mismatch (file corrupt or replaced)")
    try:
        declare_tasks(config.get("task_declarations") or {})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: its declared tasks clash with this process's: {err}") from err
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ModelConfigError) as err:
        raise CheckpointError(f"{config_path}: bad model config: {err}") from err
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: cannot load weights: {err}") from err
    tasks = _checked_tasks(config_path, config.get("tasks"))
    round_, state = _checked_meta(meta_path, meta)
    _check_weights(weights_path, weights)
    return Checkpoint(path, model_config, tasks, round_, state, weights)


def _checked_tasks(config_path: Path, tasks) -> tuple[str, ...]:
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise CheckpointError(f"{config_path}: 'tasks' must be a non-empty list of task names, got {tasks!r}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise CheckpointError(f"{config_path}: tasks {unknown} are neither built in nor declared in the checkpoint")
    return tuple(tasks)


def _checked_meta(meta_path: Path, meta: dict) -> tuple[int, dict]:
    round_, state = meta.get("round"), meta.get("state", {})
    if not isinstance(round_, int) or isinstance(round_, bool) or round_ < 0:
        raise CheckpointError(f"{meta_path}: 'round' must be an integer >= 0, got {round_!r}")
    if not isinstance(state, dict):
        raise CheckpointError(f"{meta_path}: 'state' must be an object, got {type(state).__name__}")
    return round_, state


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
