"""Progress of a submitted run, read from its ``metrics.jsonl`` as rounds complete, and the
closing results table. Shared by ``helixfed simulate`` and ``helixfed server``."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.config import APP_DIR
from common.logs import progress_bar
from common.protocol import MetricsLog, RoundMetrics, RunConfigKey, Status
from common.tasks import get_task
from server.checkpoints import FINAL_DIR
from server.ops.processes import ProcessGroup, run_status, started_run_id

console = Console(stderr=True)


class RunFailed(RuntimeError):
    """The federated run did not complete; the message says why and where the logs are."""


def follow_progress(submit: subprocess.Popen, metrics: MetricsLog, total: int, timeout: float
                    ) -> list[RoundMetrics]:
    """Print each round as it lands in metrics.jsonl until ``flwr run`` returns, under a progress bar
    of rounds with its ETA (from the rounds so far)."""
    shown, deadline = 0, time.monotonic() + timeout
    with progress_bar(console) as bar:
        rounds = bar.add_task("federated rounds", total=total)
        while True:
            finished = submit.poll() is not None
            history = metrics.read()
            for line in history[shown:]:
                bar.console.print(round_summary(line, total))
                bar.update(rounds, completed=min(line.round, total))
            shown = len(history)
            if finished:
                return history
            if time.monotonic() > deadline:
                raise RunFailed(f"no result after {timeout:.0f} s")
            time.sleep(1.0)


def _headline(task: str, metrics: dict) -> str:
    value = metrics.get(get_task(task).headline_metric)
    return f"{task} {value:.3f}" if isinstance(value, (int, float)) else f"{task} –"


def round_summary(line: RoundMetrics, total: int) -> str:
    central = ", ".join(_headline(t, m) for t, m in line.central.items())
    if line.round == 0:
        return f"[bold]round 0/{total}[/bold] (initial model)  central: {central}"
    eps = ", ".join(f"{k} {v:.2f}" for k, v in line.epsilon.items() if v is not None)
    refused, rejected = line.with_status(Status.REFUSED), line.with_status(Status.REJECTED)
    refused_text = f"  refused: {', '.join(refused)}" if refused else ""
    rejected_text = f"  rejected: {', '.join(rejected)}" if rejected else ""
    return (f"[bold]round {line.round}/{total}[/bold] {line.wall_seconds:.1f} s  "
            f"institutions: {len(line.institutions)}  central: {central}\n"
            f"    epsilon: {eps}{refused_text}{rejected_text}")


def results_table(history: list[RoundMetrics]) -> Table:
    first, last = history[0], history[-1]
    table = Table(title=f"central evaluation: round 0 vs round {last.round}")
    for column in ("task", "species", "metric", "round 0", f"round {last.round}"):
        table.add_column(column)
    for task, metrics in last.central.items():
        key = get_task(task).headline_metric
        before = first.central.get(task, {})
        table.add_row(task, "all", key, _num(before.get(key)), _num(metrics.get(key)))
        for species, m in metrics.get("species", {}).items():
            table.add_row("", species, key, _num(before.get("species", {}).get(species, {}).get(key)),
                          _num(m.get(key)))
    return table


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def run_config_arg(config_file: Path, out_dir: Path, rounds: int | None, resume: bool) -> str:
    """``--run-config`` for ``flwr run``: absolute paths, since the ServerApp runs elsewhere."""
    values = {RunConfigKey.CONFIG_FILE: f'"{config_file}"', RunConfigKey.BASE_DIR: f'"{Path.cwd()}"',
              RunConfigKey.OUT_DIR: f'"{out_dir}"', RunConfigKey.NUM_ROUNDS: str(rounds or 0),
              RunConfigKey.RESUME: "true" if resume else "false"}
    return " ".join(f"{k}={v}" for k, v in values.items())


def submit_and_wait(group: ProcessGroup, connection: str, *, run_config: str, out: Path, rounds: int,
                    timeout: float, federation_config: str | None = None) -> list[RoundMetrics]:
    """``flwr run`` the app on ``connection``, show rounds as they complete, then check the run's
    status with ``flwr ls`` (``flwr run`` exits 0 even when the run failed)."""
    command = ["flwr", "run", str(APP_DIR), connection, "--stream", "--run-config", run_config]
    if federation_config:
        command += ["--federation-config", federation_config]
    submit = group.start(command, log_file=out / "flwr-run.log")
    history = follow_progress(submit, MetricsLog(out), rounds, timeout)
    run_log = (out / "flwr-run.log").read_text(errors="replace")
    run_id = started_run_id(run_log)
    status = run_status(group, connection, run_id) if run_id is not None else None
    if status != "finished:completed" or not (out / FINAL_DIR).is_dir():
        raise RunFailed(f"run {run_id} status {status!r}; see {out / 'flwr-run.log'}\n{run_log[-3000:]}")
    return history
