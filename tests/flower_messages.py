"""Messages and contexts as Flower builds them for a ClientApp (shared by the ClientApp tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from common import protocol as p
from common.config import TrainingConfig
from common.model import GenomicTransformer, ModelConfig


def server_request(message_type: str, *, model: ModelConfig, tasks: tuple[str, ...],
                   announced: ModelConfig | None = None) -> Message:
    """A round-1 train or evaluate message carrying a fresh model's weights; ``announced`` is the model
    config the message claims (default ``model``: a hostile server may claim another)."""
    torch.manual_seed(0)
    weights = GenomicTransformer(model, tasks=tasks).state_dict()
    config = ConfigRecord({p.MODEL_CONFIG: json.dumps((announced or model).to_dict()), p.TASKS: json.dumps(list(tasks)),
                           p.TRAINING: TrainingConfig().model_dump_json(), p.SERVER_ROUND: 1})
    return Message(content=RecordDict({p.ARRAYS: ArrayRecord(weights), p.CONFIG: config}), dst_node_id=7,
                   message_type=message_type)


def institution_context(institution_file: Path) -> Context:
    """A SuperNode's context for an institution agent started with ``--node-config institution=...``."""
    return Context(run_id=1, node_id=7, node_config={"institution": str(institution_file)}, state=RecordDict(),
                   run_config={})
