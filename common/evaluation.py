"""Prediction and evaluation of the shared model on labelled datasets: used by institutions
(federated evaluation), the server (central evaluation) and the command line alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.data.dataset import GenomicDataset, collate
from common.metrics import task_metrics
from common.model import GenomicTransformer
from common.protocol import LOSS, NUM_EXAMPLES
from common.tasks import IGNORE_INDEX, get_task, task_loss


@dataclass(frozen=True)
class Predictions:
    """Class probabilities: ``[N, C]`` for sequence tasks; for per-position tasks the real bases of
    every sequence concatenated, ``[sum of lengths, C]``, with ``lengths`` to split them back."""

    probabilities: np.ndarray
    labels: np.ndarray | None
    lengths: np.ndarray
    loss: float | None


@torch.no_grad()
def predict(model: GenomicTransformer, dataset: GenomicDataset, *, batch_size: int = 64,
            device: str | torch.device = "cpu") -> Predictions:
    """Run the model over a dataset in eval mode; returns probabilities, labels and mean loss."""
    task = dataset.task.name
    was_training = model.training
    model.eval()
    probabilities, labels, lengths, loss_sum = [], [], [], 0.0
    for tokens, batch_labels in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        tokens, batch_labels = tokens.to(device), batch_labels.to(device)
        logits = model(tokens, task).logits.float()
        loss_sum += task_loss(task, logits, batch_labels).item() * len(tokens)
        prob = logits.softmax(dim=-1)
        if get_task(task).per_position:
            real = batch_labels != IGNORE_INDEX  # [B, L]
            probabilities.append(prob[real].cpu().numpy())
            labels.append(batch_labels[real].cpu().numpy())
            lengths.append(real.sum(dim=1).cpu().numpy())
        else:
            probabilities.append(prob.cpu().numpy())
            labels.append(batch_labels.cpu().numpy())
            lengths.append(np.ones(len(tokens), dtype=np.int64))
    model.train(was_training)
    return Predictions(np.concatenate(probabilities), np.concatenate(labels), np.concatenate(lengths),
                       loss_sum / max(len(dataset), 1))


def evaluate(model: GenomicTransformer, dataset: GenomicDataset, *, batch_size: int = 64,
             device: str | torch.device = "cpu", by_species: bool = False) -> dict:
    """Metrics of one task on one labelled dataset (``loss`` included); with ``by_species`` also a
    ``species`` mapping of the same metrics per species present in the data."""
    task = dataset.task.name
    preds = predict(model, dataset, batch_size=batch_size, device=device)
    result = {**task_metrics(task, preds.labels, preds.probabilities), LOSS: preds.loss,
              NUM_EXAMPLES: len(dataset)}
    if by_species:
        result["species"] = metrics_by_species(task, dataset, preds)
    return result


def metrics_by_species(task: str, dataset: GenomicDataset, preds: Predictions) -> dict:
    """``{species: metrics}`` of ``preds`` on ``dataset``'s records of each species (the model's
    species rows, and the report's baselines scored the same way)."""
    per_record_species = np.asarray([s or "unknown" for s in dataset.species])
    rows = np.repeat(per_record_species, preds.lengths)  # one species label per scored row
    return {species: task_metrics(task, preds.labels[rows == species], preds.probabilities[rows == species])
            for species in sorted(set(per_record_species))}
