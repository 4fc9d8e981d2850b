"""The in-memory form every reader and the generator produce: records -> a torch Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from common.tasks import IGNORE_INDEX, get_task
from common.tokenizer import PAD_ID, SequenceError, encode


class DataError(ValueError):
    """Bad input data; the message names the file, the line or record, and what is wrong."""


@dataclass(frozen=True)
class Record:
    """One labelled sequence. ``label`` is an int for sequence tasks, an int array (one per base)
    for per-position tasks."""

    id: str
    sequence: str
    label: int | np.ndarray
    species: str | None = None


class GenomicDataset(Dataset):
    """Tokenised sequences with their labels, ids and species.

    Items are ``(tokens int64 [L], label)`` where label is a scalar int64 tensor for sequence tasks and
    an int64 ``[L]`` tensor for per-position tasks; :func:`collate` pads a batch of them.
    """

    def __init__(self, records: Sequence[Record], *, task: str, source: str = "<memory>",
                 max_len: int | None = None):
        self.task = get_task(task)
        self.source = source
        self.ids = [r.id for r in records]
        self.species = [r.species for r in records]
        self.sequences = [r.sequence for r in records]
        self.tokens: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        for i, r in enumerate(records):
            try:
                tokens = encode(r.sequence, index=i, max_len=max_len)
            except SequenceError as err:
                raise DataError(f"{source}: record {r.id!r}: {err}") from err
            self.tokens.append(torch.from_numpy(tokens))
            self.labels.append(self._check_label(r, len(tokens), source))

    def _check_label(self, r: Record, length: int, source: str) -> torch.Tensor:
        n = self.task.num_classes
        if self.task.per_position:
            labels = np.asarray(r.label, dtype=np.int64)
            if labels.shape != (length,):
                raise DataError(f"{source}: record {r.id!r}: {labels.size} labels for {length} bases")
            if labels.min() < 0 or labels.max() >= n:
                raise DataError(f"{source}: record {r.id!r}: labels must lie in 0..{n - 1}")
            return torch.from_numpy(labels)
        if not 0 <= int(r.label) < n:
            raise DataError(f"{source}: record {r.id!r}: label {r.label} outside 0..{n - 1}")
        return torch.tensor(int(r.label), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[i], self.labels[i]

    def record(self, i: int) -> Record:
        """Record ``i`` as it was given (a per-position label as its array of class codes)."""
        label = self.labels[i].numpy() if self.task.per_position else int(self.labels[i])
        return Record(self.ids[i], self.sequences[i], label, self.species[i])

    def label_array(self) -> np.ndarray:
        """Sequence-task labels as one array (per-position tasks: concatenated real-base labels)."""
        return torch.cat([lab.reshape(-1) for lab in self.labels]).numpy()


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad tokens with PAD_ID and per-position labels with IGNORE_INDEX.

    An empty batch (Poisson sampling can draw one) becomes ``[0, 1]`` tokens and ``[0]`` labels.
    """
    if len(batch) == 0:
        return torch.zeros((0, 1), dtype=torch.int64), torch.zeros((0,), dtype=torch.int64)
    width = max(t.shape[0] for t, _ in batch)
    tokens = torch.full((len(batch), width), PAD_ID, dtype=torch.int64)
    per_position = batch[0][1].dim() == 1
    labels = (torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.int64) if per_position
              else torch.empty(len(batch), dtype=torch.int64))
    for row, (t, lab) in enumerate(batch):
        tokens[row, : t.shape[0]] = t
        if per_position:
            labels[row, : lab.shape[0]] = lab
        else:
            labels[row] = lab
    return tokens, labels
