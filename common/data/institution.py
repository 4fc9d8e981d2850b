"""An institution's data as its agent sees it: ``<data_dir>/<task>/{train,val,test}.<tsv|csv>`` for
every task its config names, or the files its ``data:`` section names per task, split by its
``split:`` section (:mod:`common.data.sources`, :mod:`common.data.importing`). The config itself:
:func:`common.config.load_institution`."""

from __future__ import annotations

from common.config import InstitutionConfig
from common.data.dataset import DataError, GenomicDataset
from common.data.importing import institution_splits
from common.data.readers import load_dataset

SPLITS = ("train", "val", "test")


class InstitutionDataError(DataError):
    """The institution's data directory does not hold what its config says."""


def load_institution_data(config: InstitutionConfig, *, split: str, max_len: int | None = None,
                          ) -> dict[str, GenomicDataset]:
    """Every task the institution holds, one split.

    Raises:
        InstitutionDataError: the data directory or a task's split file is missing.
        DataError: a malformed file (the reader names file and line).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if config.data is not None:
        return load_institution_splits(config, max_len=max_len)[split]
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


def load_institution_splits(config: InstitutionConfig, *, max_len: int | None = None,
                            ) -> dict[str, dict[str, GenomicDataset]]:
    """split -> task -> dataset, every split at once (a source is read once)."""
    if config.data is None:
        return {split: load_institution_data(config, split=split, max_len=max_len) for split in SPLITS}
    by_task = institution_splits(config.data, config.split, species=config.species, max_len=max_len)
    return {split: {task: GenomicDataset(parts[split], task=task, source=f"{config.name}: data.{task} ({split})",
                                         max_len=max_len)
                    for task, parts in by_task.items()}
            for split in SPLITS}
