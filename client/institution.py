"""An institution's configuration and data, as its agent sees them."""

from __future__ import annotations

from pathlib import Path

from common.config import InstitutionConfig, load_config, load_yaml, parse_config
from common.data.dataset import DataError, GenomicDataset
from common.data.readers import load_dataset

SPLITS = ("train", "val", "test")


class InstitutionDataError(DataError):
    """The institution's data directory does not hold what its config says."""


def _absolute(config: InstitutionConfig, base: Path) -> InstitutionConfig:
    """Relative data and state directories are relative to the config file, not the cwd (a
    SuperNode's ClientApp runs in a directory of Flower's choosing)."""
    updates = {}
    for key in ("data_dir", "state_dir"):
        value = getattr(config, key)
        if value is not None and not value.is_absolute():
            updates[key] = (base / value).resolve()
    return config.model_copy(update=updates) if updates else config


def load_institution(path: str | Path) -> InstitutionConfig:
    """Read ``configs/institutions/<name>.yaml``; data and state directories must be given.

    Raises:
        ConfigError: bad file (names file and key path), or data_dir/state_dir missing.
    """
    path = Path(path).resolve()
    config = _absolute(load_config(path, InstitutionConfig), path.parent)
    for key in ("data_dir", "state_dir"):
        if getattr(config, key) is None:
            from common.config import ConfigError

            raise ConfigError(f"{path}: {key}: Field required for an institution agent")
    return config


def institution_from_federation(path: str | Path, index: int, *, data_root: Path,
                                state_root: Path) -> InstitutionConfig:
    """In simulation, institution ``index`` of a federation file's inline ``institutions`` list,
    with data and state under the run's directories unless the entry names its own."""
    path = Path(path).resolve()
    entries = load_yaml(path).get("institutions") or []
    if not 0 <= index < len(entries):
        raise IndexError(f"{path}: institutions: no entry {index} (the file lists {len(entries)})")
    config = parse_config(entries[index], InstitutionConfig, source=f"{path}: institutions.{index}")
    config = _absolute(config, path.parent)
    defaults = {"data_dir": data_root / config.name, "state_dir": state_root / config.name}
    return config.model_copy(update={k: v for k, v in defaults.items() if getattr(config, k) is None})


def load_institution_data(config: InstitutionConfig, *, split: str, max_len: int | None = None,
                          ) -> dict[str, GenomicDataset]:
    """Every task the institution holds, one split: ``<data_dir>/<task>/<split>.tsv``.

    Raises:
        InstitutionDataError: the data directory or a task's split file is missing.
        DataError: a malformed file (the reader names file and line).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if config.data_dir is None or not config.data_dir.is_dir():
        raise InstitutionDataError(f"institution {config.name}: data directory {config.data_dir} does not exist")
    datasets = {}
    for task in config.tasks:
        task_dir = config.data_dir / task
        if not task_dir.is_dir():
            raise InstitutionDataError(
                f"institution {config.name}: no data for task {task!r}: {task_dir} does not exist")
        datasets[task] = load_dataset(task_dir, task=task, split=split, species=config.species,
                                      max_len=max_len)
    return datasets
