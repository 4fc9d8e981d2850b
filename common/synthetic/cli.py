"""``helixfed data synth``: generate a federation's data from its config file.

Reads the ``institutions`` and ``data`` sections of a federation file (validated whole) and writes ``DIR/<institution>/<task>/{train,val,test}.tsv``, the central
evaluation set, the variant pairs and ``DIR/manifest.yaml``. Generated data is never committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from common.config import ConfigError, SyntheticDataConfig, load_federation
from common.data.dataset import DataError

console = Console(stderr=True)


def synth_from_config(config_file: Path, out_dir: Path) -> dict:
    """Generate the data a federation file describes; returns the manifest."""
    from common.synthetic.federation import write_federation_data

    federation = load_federation(config_file)
    if not federation.institutions:
        raise ConfigError(f"{config_file}: institutions: no institutions to generate data for")
    data = federation.data or SyntheticDataConfig()
    generated = [i for i in federation.institutions if i.data is None]  # the others name their own files
    return write_federation_data(institutions=generated, out_dir=out_dir, seed=data.seed,
                                 n_per_task=data.n_per_task, central_n=data.central_n,
                                 lengths=dict(data.lengths) or None, difficulty=data.difficulty,
                                 public_bases=data.public_bases, progress=True)


def add_synth_parser(actions: argparse._SubParsersAction) -> None:
    """Add ``synth`` to ``helixfed data``'s actions (common.data.cli)."""
    synth = actions.add_parser("synth", help="generate every institution's data from a federation file")
    synth.add_argument("--config", type=Path, required=True, help="federation YAML (institutions, data)")
    synth.add_argument("--out", type=Path, required=True, help="output directory (must be new or empty)")
    synth.set_defaults(func=run_synth_command)


def run_synth_command(args: argparse.Namespace) -> int:
    try:
        manifest = synth_from_config(args.config, args.out)
    except (ConfigError, DataError, OSError) as err:
        console.print(f"[red]data synth failed:[/red] {err}")
        return 1
    institutions = manifest.get("institutions", {})
    console.print(f"wrote {len(institutions)} institutions to {args.out} (manifest {args.out / 'manifest.yaml'})")
    return 0
