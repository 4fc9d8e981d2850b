"""Shared fixtures: tiny configs keep the suite fast on 2 CPU cores."""

import os

import pytest
import torch

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    from common.model import ModelConfig

    return ModelConfig(d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0, max_len=96)
