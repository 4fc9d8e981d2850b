"""``helixfed simulate``: a whole federation on one machine through Flower's simulation engine.

Generates the institutions' data if it is not there yet, starts a SuperLink in simulation mode
(one simulated SuperNode per institution) that this command owns, submits the run with
``flwr run``, shows progress from ``metrics.jsonl`` as rounds complete, checks the run's final
status (``flwr run`` exits 0 even when the run failed) and stops every process it started.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import yaml
from rich.console import Console

from common.config import ConfigError, FederationConfig, load_federation
from common.protocol import METRICS_FILE, MetricsLog, RoundMetrics
from server.audit_log import AUDIT_FILE
from server.checkpoints import CHECKPOINT_DIR, FINAL_DIR
from server.ops.processes import ProcessGroup, free_port, wait_for_port, write_connection
from server.ops.progress import RunFailed, results_table, run_config_arg, submit_and_wait
from server.report import PLOTS_DIR, REPORT_FILE

log = logging.getLogger(__name__)
console = Console(stderr=True)
CONNECTION = "helixfed-sim"


def ensure_data(config: FederationConfig) -> Path:
    """Generate the federation's data under ``data_dir`` unless exactly that data is already there
    (generated data whose parameters differ from the config is generated again)."""
    from common.synthetic.federation import MANIFEST, manifest_differences, write_federation_data

    data_dir = Path(config.data_dir)
    manifest_path = data_dir / MANIFEST
    generated = [i for i in config.institutions if i.data is None]  # the others read their own files
    if config.institutions and not generated:
        return data_dir
    if config.data is None:
        if manifest_path.is_file() or data_dir.is_dir():
            return data_dir
        raise ConfigError(f"no data at {data_dir} and no `data:` section to generate it from")
    d = config.data
    arguments = {"institutions": generated, "seed": d.seed, "n_per_task": d.n_per_task,
                 "central_n": d.central_n, "lengths": dict(d.lengths) or None, "difficulty": d.difficulty,
                 "public_bases": d.public_bases}
    if manifest_path.is_file():
        differences = manifest_differences(yaml.safe_load(manifest_path.read_text()) or {}, **arguments)
        if not differences:
            console.print(f"[dim]data: using {data_dir}[/dim]")
            return data_dir
        console.print(f"data: {data_dir} was generated with other settings ({'; '.join(differences)}): regenerating")
        shutil.rmtree(data_dir)
    console.print(f"data: generating {len(generated)} institutions into {data_dir}")
    write_federation_data(out_dir=data_dir, progress=True, **arguments)
    return data_dir


SIMULATED_MARKER = ".helixfed-simulated"  # in a state directory `helixfed simulate` created


def simulated_state_dirs(config: FederationConfig) -> list[Path]:
    return [config.institution(i).state_dir for i in range(len(config.institutions))
            if config.institution(i).state_dir is not None]


def mark_simulated_state(config: FederationConfig) -> None:
    """Mark the state directories this simulation creates (new or empty ones only: a directory that
    already holds something, such as a real institution's ledger, is never marked)."""
    for state_dir in simulated_state_dirs(config):
        if not state_dir.exists() or not any(state_dir.iterdir()):
            state_dir.mkdir(parents=True, exist_ok=True)
            (state_dir / SIMULATED_MARKER).write_text("created by helixfed simulate; --fresh may delete this "
                                                      "directory\n")


def missing_inputs(config: FederationConfig) -> list[str]:
    """One line per data folder or source file a simulated institution names but that is not there."""
    problems = []
    for index in range(len(config.institutions)):
        institution = config.institution(index)
        if institution.data is not None:
            for task, source in institution.data.items():
                for path in source.paths():
                    if not path.exists():
                        problems.append(f"{institution.name}: data.{task}: {path} does not exist")
        elif institution.data_dir is None or not institution.data_dir.is_dir():
            problems.append(f"{institution.name}: data directory {institution.data_dir} does not exist")
        else:
            problems += [f"{institution.name}: no data for task {task!r}: {institution.data_dir / task} does not exist"
                         for task in institution.tasks if not (institution.data_dir / task).is_dir()]
    return problems


def forget_simulated_state(config: FederationConfig, out: Path) -> None:
    """``--fresh``: a new simulated world. The ledgers of this federation's simulated institutions, the
    checkpoints and the outputs under ``out`` are deleted (generated data is kept). A state directory
    without the simulation's marker may hold a real institution's ledger: then nothing is deleted."""
    doubtful = [d for d in simulated_state_dirs(config) if d.exists() and not (d / SIMULATED_MARKER).is_file()]
    if doubtful:
        raise ConfigError(f"--fresh: {doubtful[0]} was not created by `helixfed simulate` (no {SIMULATED_MARKER}); "
                          f"it may hold a real institution's privacy ledger, so nothing was deleted. Remove it by "
                          f"hand if you are sure, or choose another output directory")
    for state_dir in simulated_state_dirs(config):
        if state_dir.exists():
            shutil.rmtree(state_dir)
    for name in (CHECKPOINT_DIR, FINAL_DIR, METRICS_FILE, AUDIT_FILE, REPORT_FILE, PLOTS_DIR):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    console.print(f"[yellow]--fresh: simulated institutions' ledgers and outputs under {out} deleted[/yellow]")


def simulate(config_file: Path, *, rounds: int | None = None, out_dir: Path | None = None,
             resume: bool = False, fresh: bool = False, timeout: float = 3600.0) -> list[RoundMetrics]:
    """Run the federation to the end; returns the metrics history. Raises RunFailed."""
    config_file = config_file.resolve()
    config = load_federation(config_file, output_dir=out_dir)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ensure_data(config)
    problems = missing_inputs(config)
    if problems:  # before anything is deleted or started: inside Ray each would be a 60-line traceback
        raise ConfigError("the simulated institutions' data is not all there:\n  " + "\n  ".join(problems))
    if fresh:
        forget_simulated_state(config, out)
    mark_simulated_state(config)
    if not resume:  # progress is read from this file: never show an older run's rounds
        MetricsLog(out).clear()
    group = ProcessGroup(out / ".flwr")
    (group.flwr_home / "state.db").unlink(missing_ok=True)  # one run per SuperLink start
    try:
        return _run(group, config, config_file, out, rounds, resume, timeout)
    finally:
        group.stop()


def _run(group: ProcessGroup, config: FederationConfig, config_file: Path, out: Path, rounds, resume,
         timeout) -> list[RoundMetrics]:
    port, control = free_port(), free_port()
    superlink = group.start(
        ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
         "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port),
         "--control-api-address", f"127.0.0.1:{control}", "--database", str(group.flwr_home / "state.db")],
        log_file=out / "superlink.log")
    wait_for_port(port, timeout=60, process=superlink)
    write_connection(group.flwr_home, CONNECTION, f"127.0.0.1:{port}")
    n = len(config.institutions)
    return submit_and_wait(group, CONNECTION, run_config=run_config_arg(config_file, out, rounds, resume),
                           out=out, rounds=rounds or config.federation.rounds, timeout=timeout,
                           federation_config=f"num-supernodes={n} client-resources-num-cpus=1")


def add_simulate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate", help="run a simulated federation on this machine")
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"), help="federation YAML")
    parser.add_argument("--rounds", type=int, default=None, help="override federation.rounds")
    parser.add_argument("--out", type=Path, default=None, help="override output_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--fresh", action="store_true",
                        help="simulation only: delete the simulated institutions' ledgers and the outputs first")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    parser.set_defaults(func=run_simulate_command)


def run_simulate_command(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        history = simulate(args.config, rounds=args.rounds, out_dir=args.out, resume=args.resume,
                           fresh=args.fresh, timeout=args.timeout)
    except (ConfigError, RunFailed) as err:
        console.print(f"[red]simulation failed:[/red] {err}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process this command started was stopped[/yellow]")
        return 130
    console.print(results_table(history))
    out = load_federation(args.config).output_dir if args.out is None else args.out.resolve()
    console.print(f"done in {time.monotonic() - started:.0f} s: report {Path(out) / REPORT_FILE}, "
                  f"final model {Path(out) / FINAL_DIR}")
    return 0
