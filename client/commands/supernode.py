"""``helixfed client``: an institution's agent, a Flower SuperNode next to the institution's data.

Before starting the SuperNode it checks what would otherwise fail late and obscurely: the
institution config, its data, its privacy ledger, that the server is reachable and that the
server's certificate verifies against the given CA. The SuperNode's node config points at the
institution's own config file; the ClientApp reads data, budget and state from there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from rich.console import Console

from client.privacy.ledger import LedgerError, PrivacyLedger
from common.config import ConfigError, load_institution
from common.data.dataset import DataError
from common.data.institution import load_institution_data

console = Console(stderr=True)
KEY_NOT_REGISTERED = 305  # flower-supernode's exit code when the SuperLink refuses its key


class AgentError(RuntimeError):
    """The agent cannot start; the message says what to fix."""


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise AgentError(f"--server {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def check_reachable(host: str, port: int, *, timeout: float = 5.0) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        raise AgentError(f"cannot reach the server at {host}:{port}: {err.strerror or err}") from err


def check_certificate(host: str, port: int, ca: Path, *, timeout: float = 5.0) -> None:
    """A TLS handshake with the CA the institution was given: fails early on a wrong CA or name."""
    if not ca.is_file():
        raise AgentError(f"--root-certificates {ca}: file not found")
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as err:
        raise AgentError(f"the server's certificate does not verify against {ca}: {err.verify_message}") from err
    except (ssl.SSLError, OSError) as err:
        raise AgentError(f"TLS handshake with {host}:{port} failed: {err}") from err


def check_port_free(port: int) -> None:
    """The SuperNode's local app API port must be free; otherwise Flower dies with a long traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is not "taken"
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise AgentError(f"local port {port} (the SuperNode's app API) is taken ({err.strerror}), probably by "
                             f"another `helixfed client` on this machine; pass --port with a free port") from err


def check_institution(path: Path) -> None:
    """Config, data and ledger load; errors name what and where."""
    config = load_institution(path)
    load_institution_data(config, split="train", max_len=None)
    if config.privacy.enabled:
        privacy = config.privacy
        ledger = PrivacyLedger.open(config.state_dir, institution=config.name, budget_epsilon=privacy.epsilon,
                                    delta=privacy.delta, accountant=privacy.accountant,
                                    key_file=privacy.ledger_key)
        console.print(f"{config.name} ({config.species}): tasks {', '.join(config.tasks)}; "
                      f"epsilon spent {ledger.epsilon():.3f} of {privacy.epsilon:g}")


def supernode_command(*, institution: Path, server: str, ca: Path | None, key: Path | None,
                      port: int) -> list[str]:
    command = ["flower-supernode", "--superlink", server, "--port", str(port),
               "--node-config", f'institution="{institution.resolve()}"']
    if ca is None:
        return [*command, "--insecure"]
    command += ["--root-certificates", str(ca)]
    return [*command, "--auth-supernode-private-key", str(key)] if key else command


def run_supernode(command: list[str]) -> tuple[int, bool]:
    """Run the SuperNode in its own session until it exits or we are interrupted; stop its children.

    Returns its exit code and whether the SuperLink refused its key (Flower says so only in its log:
    exit code 305, "Failed to activate SuperNode", while the process itself exits with 1)."""
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "HELIXFED_RUN_TAG": uuid.uuid4().hex,
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    refused = threading.Event()

    def relay() -> None:  # pass the SuperNode's log through, watching for a refusal
        for line in process.stdout:
            sys.stderr.write(line)
            if "Failed to activate SuperNode" in line or f"Exit Code: {KEY_NOT_REGISTERED}" in line:
                refused.set()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        code = process.wait()
    finally:
        # The SuperNode's own children (SuperExec, app processes) share its session and would
        # outlive it, retrying forever: stop the whole session whenever the SuperNode ends.
        _stop_session(process)
        reader.join(timeout=5)
    return code, refused.is_set()


def _stop_session(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def add_client_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("client", help="run an institution's agent (SuperNode + ClientApp)")
    parser.add_argument("--institution", type=Path, required=True, help="institution YAML")
    parser.add_argument("--server", "--superlink", dest="server", required=True,
                        help="HOST:PORT of the coordinating server (--superlink, as flower-supernode says)")
    parser.add_argument("--root-certificates", type=Path, help="CA certificate the server's certificate is checked against")
    parser.add_argument("--key", "--auth-supernode-private-key", dest="key", type=Path,
                        help="the institution's private key, enrolled with the server (Flower's name also works)")
    parser.add_argument("--insecure", action="store_true", help="no TLS: local experiments only")
    parser.add_argument("--port", type=int, default=9094, help="local port of the SuperNode's app API")
    parser.add_argument("--activation-wait", type=float, default=90.0, metavar="SECONDS",
                        help="keep retrying a refused activation this long: after a crash the server still "
                             "holds the old connection for about a minute (default 90)")
    parser.set_defaults(func=run_client_command)


def run_client_command(args: argparse.Namespace) -> int:
    try:
        if not args.insecure and args.root_certificates is None:
            raise AgentError("give --root-certificates CA (and --key) for TLS, or --insecure for a local experiment")
        if args.key is not None and not args.key.is_file():
            raise AgentError(f"--key {args.key}: file not found")
        check_port_free(args.port)
        check_institution(args.institution)
        host, port = parse_address(args.server)
        check_reachable(host, port)
        if args.insecure:
            console.print("[bold red]WARNING: --insecure: no TLS; the model and metrics travel in clear text. "
                          "Local experiments only.[/bold red]")
        else:
            check_certificate(host, port, args.root_certificates)
    except (AgentError, ConfigError, DataError, LedgerError, OSError) as err:
        console.print(f"[red]cannot start the institution agent:[/red] {err}")
        return 1
    command = supernode_command(institution=args.institution, server=args.server,
                                ca=None if args.insecure else args.root_certificates, key=args.key, port=args.port)
    try:
        code, refused = run_until_admitted(command, wait=args.activation_wait)
    except KeyboardInterrupt:
        return 130
    if refused:
        console.print(f"[red]the server refused this institution's key ({args.key}): it is not registered, or "
                      "an agent with this key is still connected. Ask the coordinating site to enroll the "
                      "matching public key.[/red]")
    return code


def run_until_admitted(command: list[str], *, wait: float) -> tuple[int, bool]:
    """Run the SuperNode; while the server refuses its activation, try again for ``wait`` seconds.

    Flower answers "not registered" and "a node with this key is still online" with the same
    error, and a crashed agent's old connection stays online until its heartbeats lapse (about a
    minute): a restarted agent must be patient before concluding that its key is not enrolled."""
    deadline = time.monotonic() + wait
    while True:
        code, refused = run_supernode(command)
        if not refused or time.monotonic() >= deadline:
            return code, refused
        console.print("[yellow]activation refused; retrying in 10 s (a previous connection may still be "
                      "open on the server)[/yellow]")
        time.sleep(10)
