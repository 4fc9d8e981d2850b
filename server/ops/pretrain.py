"""``helixfed pretrain``: pre-train the federation's backbone on public FASTA (masked-base
prediction, no DP), writing the checkpoint its ``model.init_checkpoint`` names.

The model section and the tasks come from the federation file, so the checkpoint fits the
federation exactly; the recipe is in :mod:`server.pretraining`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from common.checkpoint import CheckpointError
from common.config import ConfigError, load_federation
from common.data.dataset import DataError
from server.pretraining import PretrainError, PretrainResult, PretrainSettings, pretrain

console = Console(stderr=True)


def pretrain_from_config(config_file: Path, *, fasta: list[Path], out_dir: Path, settings: PretrainSettings,
                         resume: bool = False, device: str = "cpu", progress: bool = True) -> PretrainResult:
    """Pre-train the model a federation file describes (its ``model`` and ``tasks``)."""
    federation = load_federation(config_file)
    return pretrain(model_config=federation.model, tasks=tuple(federation.tasks), fasta=fasta, out_dir=out_dir,
                    settings=settings, resume=resume, progress=progress, device=device)


def add_pretrain_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = PretrainSettings()
    parser = subparsers.add_parser("pretrain", help="pre-train the backbone on public FASTA (masked bases, no DP)")
    parser.add_argument("--fasta", type=Path, nargs="+", required=True, help="FASTA file(s) of public sequence")
    parser.add_argument("--config", type=Path, required=True, help="federation YAML (model and tasks)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (checkpoint/ goes here)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="windows per step")
    parser.add_argument("--length", type=int, default=None, help="window length (default model.max_len)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="peak AdamW learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed (the run is deterministic)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every, help="held-out evaluation cadence")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                        help="checkpoint cadence (and at the end)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.set_defaults(func=run_pretrain_command)


def run_pretrain_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        settings = PretrainSettings(steps=args.steps, batch_size=args.batch_size, length=args.length,
                                    learning_rate=args.lr, seed=args.seed, eval_every=args.eval_every,
                                    checkpoint_every=args.checkpoint_every)
        result = pretrain_from_config(args.config, fasta=args.fasta, out_dir=args.out, settings=settings,
                                      resume=args.resume, device=args.device)
    except (ConfigError, DataError, PretrainError, CheckpointError, OSError) as err:
        console.print(f"[red]pretrain failed:[/red] {escape(str(err))}", soft_wrap=True, highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: continue with --resume from the last checkpoint[/yellow]")
        return 130
    last = result.history[-1] if result.history else {}
    console.print(f"done in {time.monotonic() - started:.0f} s: step {result.step}, held-out masked-base accuracy "
                  f"{last.get('heldout_accuracy', float('nan')):.3f}; checkpoint {result.checkpoint} "
                  f"(set model.init_checkpoint to it)", soft_wrap=True, highlight=False)
    return 0
