"""The Flower run config keys helixfed reads (``[tool.flwr.app.config]`` in pyproject.toml) and
how paths in them resolve. Both apps use this, so a simulation's server and institutions agree
on where the federation file and the run's outputs are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from common.config import load_yaml

CONFIG_FILE = "config-file"  # federation YAML
BASE_DIR = "base-dir"  # relative paths resolve here; empty: the app's directory
OUT_DIR = "out-dir"  # overrides the federation file's output_dir; empty: keep it
NUM_ROUNDS = "num-server-rounds"  # 0: the federation file's federation.rounds
RESUME = "resume"  # continue from the last checkpoint in the output directory

APP_DIR = Path(__file__).resolve().parents[1]


def base_dir(run_config: Mapping) -> Path:
    return Path(str(run_config.get(BASE_DIR) or APP_DIR)).resolve()


def resolve_run_paths(run_config: Mapping) -> tuple[Path, Path]:
    """(federation file, output directory), both absolute.

    The ServerApp runs in the SuperLink's working directory, not the user's, so nothing here may
    depend on the cwd.
    """
    base = base_dir(run_config)
    config_file = (base / str(run_config.get(CONFIG_FILE) or "configs/tiny.yaml")).resolve()
    out = str(run_config.get(OUT_DIR) or "")
    if not out:
        out = str(load_yaml(config_file).get("output_dir") or "runs/helixfed")
    return config_file, (base / out).resolve()
