"""``helixfed train``: single-site training on an institution's own data.

The centralized upper bound for a federation and a set-up check for a new institution: same data
files, same trainer, same ledger as federated rounds (with DP, every epoch is a round in the
ledger and the budget gate applies; with ``--no-dp`` nothing is spent and nothing may leave).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from client.agent import InstitutionAgent
from client.privacy.ledger import BudgetExhausted
from common.checkpoint import PRIVATE_STARTS, checkpoint_privacy, load_checkpoint, save_checkpoint, start_from
from common.config import ConfigError, PrivacyConfig, TrainingConfig, load_federation, load_institution
from common.data.cli import run_data_command
from common.logs import progress_bar
from common.model import GenomicTransformer, ModelConfig
from common.protocol import Status
from common.tasks import get_task

console = Console()


def model_and_training(path: Path | None, *, default_model: ModelConfig | None = None,
                       ) -> tuple[ModelConfig, TrainingConfig | None, Path | None]:
    """``model:`` (with its ``init_checkpoint``) and ``training:`` of a federation file (validated
    whole, as the server would), or the defaults for what the file does not set."""
    default_model = default_model or ModelConfig()
    if path is None:
        return default_model, None, None
    federation = load_federation(path)
    given = federation.model_fields_set
    return (federation.model if "model" in given else default_model,
            federation.training if "training" in given else None, federation.init_checkpoint)


EXIT_REFUSED = 3  # the privacy budget allows no (further) training


class BudgetRefused(Exception):
    """The institution's budget allows not even one epoch."""


def train_locally(*, institution_file: Path, out_dir: Path, epochs: int, dp: bool,
                  config_file: Path | None = None) -> dict:
    """Train ``epochs`` local epochs, evaluate on the test split, save the model; returns metrics."""
    institution = load_institution(institution_file)
    if not dp:
        institution = institution.model_copy(update={"privacy": PrivacyConfig(enabled=False)})
    model_config, training, init_checkpoint = model_and_training(config_file)
    agent = InstitutionAgent(institution, federation_training=training)
    agent.training = agent.training.model_copy(update={"local_epochs": 1.0})
    torch.manual_seed(agent.training.seed)
    model = GenomicTransformer(model_config, tasks=tuple(institution.tasks))
    init_privacy = None  # from scratch; a DP fine-tune of a non-DP start is not DP
    if init_checkpoint is not None:
        init = load_checkpoint(init_checkpoint)
        init_privacy = checkpoint_privacy(init)
        start_from(model, init)
    run_id = f"local-train-{time.strftime('%Y%m%dT%H%M%S')}"
    epochs_done = 0
    with progress_bar(console) as bar:  # local curves also go to <state_dir>/tensorboard (agent.train)
        epoch_bar = bar.add_task(f"{institution.name}: local epochs", total=epochs)
        for epoch in range(1, epochs + 1):
            outcome = agent.train(model, run_id=run_id, server_round=epoch, num_rounds=epochs)
            if outcome.status == Status.REFUSED:
                bar.console.print(f"[yellow]epoch {epoch}: {outcome.reason}; stopping[/yellow]")
                if epochs_done == 0:  # nothing trained: write no model that looks like one
                    raise BudgetRefused(f"{institution.name}: {outcome.reason}; nothing trained, no model written")
                break
            epochs_done = epoch
            losses = ", ".join(f"{t} {v:.3f}" for t, v in outcome.losses.items())
            bar.console.print(f"epoch {epoch}/{epochs}: loss {losses}; epsilon {outcome.epsilon:.3f}")
            bar.update(epoch_bar, completed=epoch)
    metrics = agent.evaluate(model, split="test")
    private = agent.ledger is not None and init_privacy in (None, *PRIVATE_STARTS)  # privacy.enabled: false too
    result = {"institution": institution.name, "epochs": epochs_done, "dp": private, "epsilon": agent.epsilon(),
              "delta": institution.privacy.delta if agent.ledger is not None else None,
              "accountant": agent.ledger.accountant if agent.ledger is not None else None,
              "init_privacy": init_privacy, "test": metrics}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "final", weights=model.state_dict(), model_config=model_config,
                    tasks=tuple(institution.tasks), round=epochs_done,
                    state={"local_training": {k: v for k, v in result.items() if k != "test"}})
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _show(result: dict) -> None:
    table = Table(title=f"{result['institution']}: test split after {result['epochs']} epochs")
    for column in ("task", "metric", "value", "loss", "examples"):
        table.add_column(column)
    for task, m in result["test"].items():
        key = get_task(task).headline_metric
        table.add_row(task, key, f"{m[key]:.3f}", f"{m['loss']:.3f}", str(m["num-examples"]))
    console.print(table)
    eps = result["epsilon"]
    console.print(f"epsilon spent (cumulative, ledger): {eps:.3f}" if result["dp"]
                  else "[yellow]trained without DP: this model carries no privacy guarantee and must not "
                       "leave the institution[/yellow]")


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train on one institution's own data (no federation)")
    parser.add_argument("--institution", type=Path, required=True, help="institution YAML")
    parser.add_argument("--out", type=Path, default=None, help="output directory (model, metrics); required "
                        "unless --dry-run")
    parser.add_argument("--dry-run", action="store_true",
                        help="read, split and summarise the data as `helixfed data check` does; train nothing, "
                             "spend nothing")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-dp", action="store_true", help="train without DP (nothing is spent)")
    parser.add_argument("--config", type=Path, default=None,
                        help="federation YAML whose model and training sections to use")
    parser.set_defaults(func=run_train_command)


def run_train_command(args: argparse.Namespace) -> int:
    if args.dry_run:
        return run_data_command(argparse.Namespace(data_command="check", institution=args.institution,
                                                   max_len=None))
    if args.out is None:
        console.print("[red]--out is required (or --dry-run)[/red]")
        return 2
    if args.epochs < 1:
        console.print("[red]--epochs must be at least 1[/red]")
        return 2
    try:
        result = train_locally(institution_file=args.institution, out_dir=args.out, epochs=args.epochs,
                               dp=not args.no_dp, config_file=args.config)
    except (BudgetRefused, BudgetExhausted) as refused:  # e.g. another process spent the budget first
        console.print(f"[red]refused:[/red] {refused}")
        return EXIT_REFUSED
    except (ConfigError, ValueError, OSError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 1
    _show(result)
    return 0
