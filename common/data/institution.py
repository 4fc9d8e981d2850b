"""An institution's data as its agent sees it: ``<data_dir>/<task>/{train,val,test}.<tsv|csv>`` for
every task its config names (the config itself: :func:`common.config.load_institution`)."""

from __future__ import annotations

from common.config import InstitutionConfig
from common.data.dataset import DataError, GenomicDataset
from common.data.readers import load_dataset

SPLITS = ("train", "val", "test")


class InstitutionDataError(DataError):
    """The institution's data directory does not hold what its config says."""


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
