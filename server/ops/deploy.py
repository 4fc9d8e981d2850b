"""``helixfed server``: the coordinating site's long-running process.

Starts a Flower SuperLink with TLS and SuperNode authentication (only enrolled institutions'
keys are admitted) and runtime dependency installation off, registers the enrolled public keys,
submits the federated run, streams progress and writes the same outputs as a simulation plus
the audit log. Ctrl-C stops everything it started; ``--resume`` continues from the last
checkpoint.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from common.config import ConfigError, FederationConfig, load_federation
from common.protocol import RoundMetrics
from server.audit_log import AUDIT_FILE, AuditLog
from server.ops.processes import ProcessGroup, free_port, wait_for_port, write_connection
from server.ops.progress import RunFailed, results_table, run_config_arg, submit_and_wait

console = Console(stderr=True)
CONNECTION = "helixfed-server"
TLS_FILES = ("ca.crt", "server.crt", "server.key")


def tls_files(tls_dir: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key) from a ``helixfed certs`` directory."""
    paths = tuple(tls_dir / name for name in TLS_FILES)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"--tls-dir {tls_dir}: missing {', '.join(missing)} (create them with helixfed certs)")
    return paths  # type: ignore[return-value]


def superlink_command(*, host: str, port: int, control_port: int, database: Path,
                      tls: tuple[Path, Path, Path] | None) -> list[str]:
    command = ["flower-superlink", "--disable-runtime-dependency-installation", "--host", host,
               "--port", str(port), "--control-api-address", f"127.0.0.1:{control_port}",
               "--database", str(database)]
    if tls is None:
        return [*command, "--insecure"]
    ca, cert, key = tls
    return [*command, "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            "--enable-supernode-auth"]


def register_institutions(group: ProcessGroup, config: FederationConfig, audit: AuditLog) -> None:
    """``flwr supernode register`` every enrolled institution's public key."""
    for enrolled in config.enrolled:
        if not enrolled.public_key.is_file():
            raise ConfigError(f"enrolled institution {enrolled.name}: public key {enrolled.public_key} not found")
        result = group.run(["flwr", "supernode", "register", str(enrolled.public_key), CONNECTION,
                            "--name", enrolled.name])
        if result.returncode != 0:
            raise RunFailed(f"registering {enrolled.name}'s key failed: {result.stdout[-800:]} {result.stderr[-800:]}")
        audit("institution_enrolled", {"institution": enrolled.name, "public_key": str(enrolled.public_key)})
        console.print(f"enrolled {enrolled.name} ({enrolled.public_key.name})")


def serve(config_file: Path, *, tls_dir: Path | None, host: str, port: int, rounds: int | None,
          resume: bool, timeout: float) -> list[RoundMetrics]:
    config = load_federation(config_file)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tls = tls_files(tls_dir) if tls_dir else None
    if tls and not config.enrolled:
        raise ConfigError(f"{config_file}: enrolled: no institution is enrolled, so none could connect")
    audit = AuditLog(out / AUDIT_FILE)
    group = ProcessGroup(out / ".flwr-server")
    # The SuperLink's database holds registered keys and past runs; a restart starts it afresh so
    # exactly the keys enrolled now are registered (resume works from our own checkpoints).
    (group.flwr_home / "state.db").unlink(missing_ok=True)
    try:
        superlink = group.start(superlink_command(host=host, port=port, control_port=free_port(),
                                                  database=group.flwr_home / "state.db", tls=tls),
                                log_file=out / "superlink.log")
        wait_for_port(port, timeout=60, process=superlink)
        write_connection(group.flwr_home, CONNECTION, f"127.0.0.1:{port}", root_certificates=tls[0] if tls else None)
        audit("server_started", {"address": f"{host}:{port}", "tls": tls is not None,
                                 "supernode_auth": tls is not None})
        console.print(f"SuperLink listening on {host}:{port} ({'TLS, node authentication' if tls else 'INSECURE'})")
        if tls:
            register_institutions(group, config, audit)
        console.print(f"waiting for {config.federation.min_available_institutions} institutions to connect …")
        return submit_and_wait(group, CONNECTION, out=out, timeout=timeout,
                               run_config=run_config_arg(config_file.resolve(), out, rounds, resume),
                               rounds=rounds or config.federation.rounds)
    finally:
        group.stop()
        audit("server_stopped", {})


def add_server_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("server", help="run the coordinating server (SuperLink + ServerApp)")
    parser.add_argument("--config", type=Path, required=True, help="federation YAML")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--tls-dir", type=Path, help="directory from `helixfed certs` (ca.crt, server.crt, server.key)")
    security.add_argument("--insecure", action="store_true",
                          help="no TLS, no node authentication: local experiments only")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=9092, help="SuperLink port institutions connect to")
    parser.add_argument("--rounds", type=int, default=None, help="override federation.rounds")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0, help="give up after this many seconds")
    parser.set_defaults(func=run_server_command)


def run_server_command(args: argparse.Namespace) -> int:
    if args.insecure:
        console.print("[bold red]WARNING: --insecure: no TLS and no node authentication. Anyone who can reach "
                      "this port can join the federation and read the model. Local experiments only.[/bold red]")
    started = time.monotonic()
    try:
        history = serve(args.config, tls_dir=args.tls_dir, host=args.host, port=args.port, rounds=args.rounds,
                        resume=args.resume, timeout=args.timeout)
    except (ConfigError, RunFailed, TimeoutError) as err:
        console.print(f"[red]server failed:[/red] {err}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: the SuperLink and everything it started were stopped[/yellow]")
        return 130
    console.print(results_table(history))
    console.print(f"run finished in {time.monotonic() - started:.0f} s")
    return 0
