"""Round overhead of the deployment engine vs the simulation engine, and a fix for the per-message
ClientApp process start.

    .venv/bin/python bench/deploy_overhead.py [--rounds 2] [--variants simulated deployed ...]

The federation: configs/tiny.yaml with its first two institutions (oslo-uh, human; jackson-lab,
mouse), DP on, the same generated data for every variant. Variants, run one after the other:

* ``simulated``: ``helixfed simulate`` (Flower's simulation engine: one Ray actor per CPU, a
  ClientApp process that lives for the whole run).
* ``deployed``: ``helixfed server --insecure`` and two ``helixfed client --insecure`` agents on
  loopback. Each SuperNode's SuperExec starts a fresh ``flwr-clientapp`` process for every message
  (train and evaluate, every round), which imports torch, Opacus and scikit-learn and reloads the
  institution's data each time.
* ``deployed-poll`` (only when asked for with ``--variants``): as ``deployed`` with
  ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.05`` for the agents (Flower 1.42's SuperExec looks for
  new tasks once a second by default).
* ``deployed-warm``: the fix tried. Flower 1.42 has no long-lived ClientApp process: every task is
  one ``flwr-clientapp`` run, and its warm executor pools exist only for Kubernetes and never for
  ClientApps. So each agent is a SuperNode with ``--isolation process`` plus this script's warm
  SuperExec (``deploy_overhead.py warm-superexec``): Flower's own SuperExec loop with an executor
  that imports the heavy third-party libraries once and forks per task, the child running Flower's
  ``run_clientapp`` exactly as ``flwr-clientapp`` would. The app's own modules are not pre-imported,
  so the code that runs is always the FAB the server shipped. Poll interval 0.05 s as above.
* ``deployed-noeval``: as ``deployed`` with ``federation.fraction_evaluate: 0`` (no federated
  evaluation on the institutions' test splits; the server's central evaluation still runs), so
  each agent gets one message per round instead of two: a mitigation available without code.

Each agent's log is timestamped here as its lines arrive, which splits a message's time into its
pull from the SuperLink, its time inside the agent and the push of the reply.

Every process started here carries a marker in its environment and is stopped (SIGTERM, then
SIGKILL for anything left) before the next variant starts and when the script ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
INSTITUTIONS = ("oslo-uh", "jackson-lab")
MARKER = "HELIXFED_BENCH_PROCESS"
POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05"}
# Deployed variants: the agent (helixfed client, or SuperNode + warm SuperExec), the agents' extra
# environment, and whether the server asks for federated evaluation (a second message per round).
DEPLOYED = {"deployed": ("client", None, True), "deployed-poll": ("client", POLL, True),
            "deployed-warm": ("warm", POLL, True), "deployed-noeval": ("client", None, False)}
VARIANTS = ("simulated", *DEPLOYED)
DEFAULT_VARIANTS = ("simulated", "deployed", "deployed-warm", "deployed-noeval")
CLOCK_ZERO = time.monotonic()
# Third-party libraries a helixfed ClientApp imports (client.app -> trainer, evaluation, metrics).
WARM_IMPORTS = ("torch", "opacus", "numpy", "sklearn.metrics", "yaml", "pydantic", "flwr.app", "flwr.clientapp")


# ---------------------------------------------------------------- the warm SuperExec (runs in its own process)


class ForkExecutor:
    """Flower's SuperExec ``Executor`` protocol: a ClientApp task runs in a fork of this process,
    which has imported WARM_IMPORTS already; any other task type goes to Flower's subprocess executor."""

    def __init__(self):
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self.fallback = SubprocessExecutor()
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types, **_) -> tuple[set, set]:
        return set(supported_task_types), set()

    def wait_for_capacity(self, *_, **__) -> None:
        return None

    def launch(self, spec):
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self.fallback.launch(spec)
        pid = os.fork()
        if pid == 0:
            os._exit(_run_clientapp_task(spec))
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children (no zombies)."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    self.children.discard(pid)

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _run_clientapp_task(spec) -> int:
    """In the forked child: what ``flwr-clientapp`` does after its imports; returns the exit code."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    try:
        run_clientapp(runtime_api_address=spec.runtime_api_address, token=spec.token, insecure=spec.insecure,
                      certificates=validate_and_resolve_root_certificates(spec.root_certificates_path,
                                                                          spec.insecure),
                      parent_pid=spec.parent_pid, runtime_dependency_install=False)
    except SystemExit as done:  # run_clientapp always ends in sys.exit
        return done.code if isinstance(done.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's loop
        return 1
    return 0


def warm_superexec(runtime_api_address: str) -> None:
    import importlib

    for module in WARM_IMPORTS:
        importlib.import_module(module)
    from flwr.supercore.superexec import run_superexec as superexec

    # Flower's loop (acquire a task, launch it, sleep the poll interval) with our executor in place
    # of the one its factory would build: the factory offers only subprocess and Kubernetes.
    superexec.get_executor = lambda *_, **__: ForkExecutor()
    superexec.run_superexec(runtime_api_address=runtime_api_address, insecure=True)


# ---------------------------------------------------------------- processes we own


class Processes:
    """Every process started here (and its descendants) carries MARKER=<tag>; stop() ends them all."""

    def __init__(self):
        self.tag = uuid.uuid4().hex
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], *, log: Path, env: dict | None = None,
              timestamps: bool = False) -> subprocess.Popen:
        """Start ``command`` with its output in ``log``; ``timestamps``: each line prefixed with the
        seconds since this script started, as it arrives (Flower's SuperNode log has no times)."""
        environment = {**os.environ, **(env or {}), MARKER: self.tag, "FLWR_TELEMETRY_ENABLED": "0",
                       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                       "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
        output = subprocess.PIPE if timestamps else open(log, "wb")  # noqa: SIM115
        process = subprocess.Popen(command, env=environment, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        if timestamps:
            threading.Thread(target=_copy_with_times, args=(process.stdout, log), daemon=True).start()
        self.started.append(process)
        return process

    def pids(self) -> list[int]:
        needle = f"{MARKER}={self.tag}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if needle in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found

    def stop(self, grace: float = 10.0) -> None:
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _ in range(3):
            left = self.pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        self.started.clear()


def _copy_with_times(stream, log: Path) -> None:
    with open(log, "w") as out:
        for line in iter(stream.readline, b""):
            out.write(f"{time.monotonic() - CLOCK_ZERO:9.2f} {line.decode(errors='replace')}")
            out.flush()


PHASES = ("pull", "agent", "push")  # Receiving -> Received, Received -> Sending, Sending -> Sent


def message_seconds(log: Path) -> dict[str, dict[str, list[float]]]:
    """From a timestamped SuperNode log, per message type and phase, the seconds each message spent:
    ``pull`` (the SuperNode fetching it from the SuperLink, "Receiving" to "Received successfully"),
    ``agent`` (task pick-up by the SuperExec, ClientApp start, the work, the reply handed back:
    "Received successfully" to "Sending") and ``push`` (the reply to the SuperLink, "Sending" to
    "Sent successfully")."""
    marks = (("pull", "Receiving: "), ("agent", "Received successfully"), ("push", "Sending: "),
             (None, "Sent successfully"))
    out: dict[str, dict[str, list[float]]] = {}
    kind, phase, since = None, None, 0.0
    for line in log.read_text(errors="replace").splitlines():
        stamp, _, text = line.strip().partition(" ")
        for next_phase, mark in marks:
            if mark not in text:
                continue
            if phase is not None and kind:
                out.setdefault(kind, {}).setdefault(phase, []).append(float(stamp) - since)
            if mark == "Receiving: ":
                kind = text.split(mark, 1)[1].split()[0]
            phase, since = next_phase, float(stamp)
            break
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def helixfed(*args: str) -> list[str]:
    return [sys.executable, "-m", "common.cli", *args]


# ---------------------------------------------------------------- configs and data


def prepare(work: Path, rounds: int) -> Path:
    """The two-institution simulation config (data generated once, shared by every variant)."""
    import yaml

    from common.config import load_federation
    from server.ops.simulate import ensure_data

    work.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(TINY.read_text())
    config["institutions"] = [i for i in config["institutions"] if i["name"] in INSTITUTIONS]
    data = work / "data"
    for institution in config["institutions"]:
        institution["data_dir"] = str(data / institution["name"])
        institution["privacy"] = {**institution.get("privacy", {}), "share_evaluation": True}
    config.update(name="overhead", data_dir=str(data), output_dir=str(work / "simulated"))
    config["federation"].update(rounds=rounds, min_train_institutions=2, min_available_institutions=2,
                                fraction_evaluate=1.0)  # as the recorded runs did (now opt-in)
    path = work / "simulated.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    ensure_data(load_federation(path))
    return path


def deployment_files(sim_config: Path, out: Path, *, evaluate: bool) -> tuple[Path, list[Path]]:
    """The server's federation file (no inline institutions; ``evaluate`` False: no federated
    evaluation, so one message per institution and round) and one institution file per agent."""
    import yaml

    config = yaml.safe_load(sim_config.read_text())
    institutions = config.pop("institutions")
    data = Path(config.pop("data_dir"))
    config.pop("data")
    # Federated evaluation is opt-in on both sides (issue 14): the measured variants ask for it and the
    # institutions share it, as every run did when these numbers were first recorded.
    config["federation"]["fraction_evaluate"] = 1.0 if evaluate else 0.0
    config.update(output_dir=str(out / "run"), central_evaluation={**config.get("central_evaluation", {}),
                                                                     "data_dir": str(data / "central")})
    out.mkdir(parents=True, exist_ok=True)
    federation = out / "federation.yaml"
    federation.write_text(yaml.safe_dump(config, sort_keys=False))
    files = []
    for entry in institutions:
        entry = {**entry, "state_dir": str(out / "state" / entry["name"]), "device": "cpu"}
        entry["privacy"] = {**entry.get("privacy", {}), "share_evaluation": evaluate}
        files.append(out / f"{entry['name']}.yaml")
        files[-1].write_text(yaml.safe_dump(entry, sort_keys=False))
    return federation, files


# ---------------------------------------------------------------- the variants


def round_seconds(out: Path) -> list[float]:
    from common.protocol import MetricsLog

    return [line.wall_seconds for line in MetricsLog(out).read() if line.round > 0]


def run_simulated(procs: Processes, sim_config: Path, work: Path, timeout: float) -> dict:
    out = work / "simulated"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    command = procs.start(helixfed("simulate", "--config", str(sim_config), "--fresh"), log=out / "command.log")
    code = command.wait(timeout=timeout)
    seconds = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"helixfed simulate exited {code}: {(out / 'command.log').read_text()[-2000:]}")
    return {"seconds": seconds, "rounds": round_seconds(out)}


def start_agent(procs: Processes, variant: str, institution: Path, server_port: int, out: Path) -> None:
    """One institution's agent: ``helixfed client``, or (deployed-warm) the SuperNode command it
    would run, with ``--isolation process``, beside a warm SuperExec."""
    from client.commands.supernode import supernode_command

    log, runtime_port = out / f"{institution.stem}.log", free_port()
    agent, env, _ = DEPLOYED[variant]
    if agent == "client":
        procs.start(helixfed("client", "--institution", str(institution), "--server", f"127.0.0.1:{server_port}",
                             "--insecure", "--port", str(runtime_port)), log=log, env=env, timestamps=True)
        return
    command = supernode_command(institution=institution, server=f"127.0.0.1:{server_port}", ca=None, key=None,
                                port=runtime_port)
    procs.start([*command, "--isolation", "process"], log=log, timestamps=True)
    procs.start([sys.executable, str(Path(__file__).resolve()), "warm-superexec", "--runtime-api-address",
                 f"127.0.0.1:{runtime_port}"], log=out / f"{institution.stem}-superexec.log", env=env)


def run_deployed(procs: Processes, variant: str, sim_config: Path, work: Path, timeout: float) -> dict:
    out = work / variant
    federation, institutions = deployment_files(sim_config, out, evaluate=DEPLOYED[variant][2])
    port, started = free_port(), time.monotonic()
    server = procs.start(helixfed("server", "--config", str(federation), "--insecure", "--host", "127.0.0.1",
                                  "--port", str(port)), log=out / "server.log")
    wait_for_text(out / "server.log", "waiting for", server, timeout=120)
    for institution in institutions:
        start_agent(procs, variant, institution, port, out)
    code = server.wait(timeout=timeout)
    seconds = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"helixfed server exited {code}: {(out / 'server.log').read_text()[-2000:]}")
    messages: dict[str, dict[str, list[float]]] = {}
    for institution in institutions:
        for kind, phases in message_seconds(out / f"{institution.stem}.log").items():
            for phase, values in phases.items():
                messages.setdefault(kind, {}).setdefault(phase, []).extend(values)
    return {"seconds": seconds, "rounds": round_seconds(out / "run"), "messages": messages}


def wait_for_text(log: Path, text: str, process: subprocess.Popen, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no {text!r} (exit {process.poll()}): {log.read_text()[-2000:]}")
        time.sleep(0.2)


def cold_import_seconds(repeats: int = 3) -> float:
    """Median seconds for a fresh interpreter to import helixfed's ClientApp module (what every
    deployed message pays before it can start working)."""
    times = []
    for _ in range(repeats):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "import client.app"], cwd=ROOT, check=True, capture_output=True)
        times.append(time.monotonic() - start)
    return statistics.median(times)


def table(results: dict[str, dict]) -> list[str]:
    """Round 1 apart: the simulation pays its start-up costs (actor imports, data load) only there."""
    reference = results.get("simulated")
    lines = ["| variant | wall s (command start to exit) | s per round (each round) | later rounds s (mean) | "
             "later rounds vs simulated |", "|---|---|---|---|---|"]
    for variant, r in results.items():
        later = statistics.mean(r["rounds"][1:]) if len(r["rounds"]) > 1 else None
        ratio = "–" if later is None or not reference or len(reference["rounds"]) < 2 else \
            f"{later / statistics.mean(reference['rounds'][1:]):.1f}x"
        each = ", ".join(f"{s:.1f}" for s in r["rounds"])
        lines.append(f"| {variant} | {r['seconds']:.1f} | {statistics.mean(r['rounds']):.1f} ({each}) | "
                     f"{'–' if later is None else f'{later:.1f}'} | {ratio} |")
    return lines


def message_table(results: dict[str, dict]) -> list[str]:
    """Median seconds of each phase of a message (pull / in the agent / push), train and evaluate."""
    lines = ["| variant | message | pull s | in the agent s | push s | messages |", "|---|---|---|---|---|---|"]
    for variant, r in results.items():
        for kind, phases in sorted(r.get("messages", {}).items(), reverse=True):  # train before evaluate
            cells = [f"{statistics.median(phases[p]):.1f}" if phases.get(p) else "–" for p in PHASES]
            lines.append(f"| {variant} | {kind} | {' | '.join(cells)} | {len(phases.get('agent', []))} |")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    warm = sub.add_parser("warm-superexec", help="(internal) the warm SuperExec of the deployed-warm variant")
    warm.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS))
    parser.add_argument("--timeout", type=float, default=600.0, help="per variant, seconds")
    parser.add_argument("--work", type=Path, default=None, help="keep configs, logs and runs here")
    return parser.parse_args()


def run_variants(args: argparse.Namespace, work: Path) -> dict[str, dict]:
    """Each variant in turn; everything a variant started is stopped before the next one starts."""
    procs, results = Processes(), {}
    sim_config = prepare(work, args.rounds)
    try:
        for variant in args.variants:
            results[variant] = run_simulated(procs, sim_config, work, args.timeout) if variant == "simulated" \
                else run_deployed(procs, variant, sim_config, work, args.timeout)
            procs.stop()
            print(f"{variant}: {results[variant]['seconds']:.0f} s", file=sys.stderr)
    finally:
        procs.stop()
    return results


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    print(f"# Deployment overhead (configs/tiny.yaml, {', '.join(INSTITUTIONS)}, DP on, {args.rounds} rounds, "
          "loopback)\n")
    print("\n".join(table(results)))
    print("\nWhere a deployed message's time goes (medians over both agents and all rounds; timestamps taken "
          "here as the SuperNode's log lines arrive): pull, the SuperNode fetching the message from the SuperLink; "
          "in the agent, task pick-up by the SuperExec, ClientApp start, the work and the reply handed back; push, "
          "the reply to the SuperLink. The rest of a round is waiting: for the other agent, for the server's "
          "aggregation and evaluation, and for the SuperNode's next poll.\n")
    print("\n".join(message_table(results)))
    print(f"\nA fresh interpreter importing client.app (the ClientApp module): {cold_import_seconds():.1f} s "
          "(median of 3); a deployed agent pays it for every message (two per round with federated evaluation).")
    print("\nA round is the server's view (train and evaluate messages out and back, aggregation, central "
          "evaluation, checkpoint); the wall time adds starting and stopping the processes. Flower's SuperNode "
          "also sleeps 3 s whenever it finds no message waiting and polls for a finished reply every 0.5 s "
          "(hard-coded in 1.42), which no variant here changes.")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def benchmark(args: argparse.Namespace) -> None:
    started, load_before = time.monotonic(), load_average()
    with tempfile.TemporaryDirectory(prefix="helixfed-deploy-") as tmp:
        results = run_variants(args, (args.work or Path(tmp)).resolve())
    report(results, args)
    print(f"\nload average (1/5/15 min) before {load_before}, after {load_average()}; "
          f"total {time.monotonic() - started:.0f} s")


def main() -> None:
    args = parse_args()
    if args.command == "warm-superexec":
        warm_superexec(args.runtime_api_address)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
