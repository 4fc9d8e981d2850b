"""Start, watch and stop the Flower processes a helixfed command owns.

Every process we start runs in its own session with a tag in its environment
(``HELIXFED_RUN_TAG``); stopping sends SIGTERM to the process groups we started, then sweeps
``/proc`` for anything still carrying the tag (Flower's SuperExec, app processes, Ray's
daemons) or living in a session a tagged process led, and kills it. The sessions matter: Ray's
agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) rewrite their process title over their
environment, so the tag is no longer readable there, but they stay in the SuperExec's session.
A run therefore leaves nothing behind, also after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)
TAG_VARIABLE = "HELIXFED_RUN_TAG"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args[0]} exited with code {process.returncode} before "
                               f"listening on 127.0.0.1:{port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def _tagged_pids(tag: str, sessions: set[int] | None = None) -> list[int]:
    """Processes carrying ``tag`` in their environment or living in one of ``sessions``; the
    sessions of tagged processes are added to ``sessions`` (never this process's own session)."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    sessions = set() if sessions is None else sessions
    own_session = os.getsid(0)
    found, rest = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(pid)
                session = os.getsid(pid)
                if session != own_session:
                    sessions.add(session)
            else:
                rest.append(pid)
    for pid in rest:
        with contextlib.suppress(OSError):
            if os.getsid(pid) in sessions:
                found.append(pid)
    return found


class ProcessGroup:
    """The processes of one command: started tagged, stopped together."""

    def __init__(self, flwr_home: Path):
        self.tag = uuid.uuid4().hex
        self.sessions: set[int] = set()  # sessions led by our processes (see the module docstring)
        self.flwr_home = flwr_home
        self.processes: list[subprocess.Popen] = []
        flwr_home.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, TAG_VARIABLE: self.tag, "FLWR_HOME": str(flwr_home),
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_DEDUP_LOGS": "0",
                    "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}

    def start(self, command: list[str], *, log_file: Path | None = None, **kwargs) -> subprocess.Popen:
        output = open(log_file, "wb") if log_file else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(command, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, **kwargs)
        self.processes.append(process)
        self.sessions.add(process.pid)  # start_new_session: it leads a session of its own
        return process

    def run(self, command: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)

    def stop(self, *, grace: float = 5.0) -> None:
        _tagged_pids(self.tag, self.sessions)  # learn the sessions while their leaders still live
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for _ in range(3):  # children of children may appear while we sweep
            stray = _tagged_pids(self.tag, self.sessions)
            if not stray:
                return
            for pid in stray:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        left = _tagged_pids(self.tag, self.sessions)
        if left:
            log.warning("processes still running after stop: %s", left)

    def alive(self) -> list[int]:
        return _tagged_pids(self.tag, self.sessions)


def write_connection(flwr_home: Path, name: str, address: str, *, root_certificates: Path | None = None) -> None:
    """A ``[superlink.<name>]`` connection in ``$FLWR_HOME/config.toml`` (Flower 1.42's place)."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append(f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def run_status(group: ProcessGroup, connection: str, run_id: int | None = None) -> str | None:
    """The status string (e.g. ``finished:completed``) of a run, from ``flwr ls --format json``."""
    result = group.run(["flwr", "ls", connection, "--format", "json"])
    try:
        runs = json.loads(result.stdout).get("runs", [])
    except json.JSONDecodeError:
        log.warning("flwr ls returned no JSON: %s %s", result.stdout[-500:], result.stderr[-500:])
        return None
    if run_id is not None:
        runs = [r for r in runs if int(r.get("run-id", -1)) == run_id]
    elif len(runs) > 1:
        raise ValueError("several runs on this SuperLink: give run_id")
    return str(runs[0].get("status")) if runs else None


def started_run_id(log_text: str) -> int | None:
    """The run id ``flwr run`` printed (``Successfully started run <id>``)."""
    found = re.findall(r"Successfully started run (\d+)", log_text)
    return int(found[-1]) if found else None
