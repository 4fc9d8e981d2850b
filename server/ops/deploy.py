"""``helixfed server``: the coordinating site's long-running process.

Starts a Flower SuperLink with TLS and SuperNode authentication (only enrolled institutions'
keys are admitted) and runtime dependency installation off, registers the enrolled public keys,
submits the federated run, streams progress and writes the same outputs as a simulation plus
the audit log. Ctrl-C stops everything it started; ``--resume`` continues from the last
checkpoint.

Operable with Flower's own tools: in Flower 1.42 the SuperLink serves its Fleet, Control and
Runtime APIs on one address (``--host``/``--port``), and its state database lives under the output
directory (``<output_dir>/superlink/state.db``) and survives restarts, so ``flwr ls``, ``flwr log``,
``flwr stop`` and ``flwr supernode ls`` reach it (with the CA, as the institutions do) and past runs
stay listed. Enrolment is kept in step with the federation file across restarts
(``<output_dir>/superlink/enrolled.json`` remembers each key's node id): keys already registered
are kept, institutions no longer enrolled are unregistered.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path

from rich.console import Console

from common.atomic import atomic_write_text
from common.config import ConfigError, FederationConfig, load_federation
from common.protocol import RoundMetrics
from server.audit_log import AUDIT_FILE, AuditLog
from server.ops.processes import ProcessGroup, wait_for_port, write_connection
from server.ops.progress import RunFailed, results_table, run_config_arg, submit_and_wait

console = Console(stderr=True)
CONNECTION = "helixfed-server"
TLS_FILES = ("ca.crt", "server.crt", "server.key")
SUPERLINK_DIR = "superlink"  # under the output directory: the SuperLink's database and our enrolment record
ENROLLED_FILE = "enrolled.json"
_REGISTERED = re.compile(r"SuperNode (\d+) registered")
_KEY_IN_USE = "Public key already in use"


def tls_files(tls_dir: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key) from a ``helixfed certs`` directory."""
    paths = tuple(tls_dir / name for name in TLS_FILES)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"--tls-dir {tls_dir}: missing {', '.join(missing)} (create them with helixfed certs)")
    return paths  # type: ignore[return-value]


def superlink_command(*, host: str, port: int, database: Path, tls: tuple[Path, Path, Path] | None) -> list[str]:
    command = ["flower-superlink", "--disable-runtime-dependency-installation", "--host", host,
               "--port", str(port), "--database", str(database)]
    if tls is None:
        return [*command, "--insecure"]
    ca, cert, key = tls
    return [*command, "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            "--enable-supernode-auth"]


def register_institutions(group: ProcessGroup, config: FederationConfig, audit: AuditLog, record_file: Path) -> None:
    """Make the SuperLink's registered keys those of ``enrolled:``: register new keys
    (``flwr supernode register``), keep those registered before a restart, unregister institutions
    no longer enrolled or whose key changed. ``record_file`` remembers name -> node id and key hash."""
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    wanted = {}
    for enrolled in config.enrolled:
        if not enrolled.public_key.is_file():
            raise ConfigError(f"enrolled institution {enrolled.name}: public key {enrolled.public_key} not found")
        wanted[enrolled.name] = (enrolled, hashlib.sha256(enrolled.public_key.read_bytes()).hexdigest())
    for name, entry in sorted(record.items()):
        if name not in wanted or wanted[name][1] != entry.get("key_sha256"):
            _unregister(group, name, entry, audit)
            del record[name]
            atomic_write_text(record_file, json.dumps(record, indent=1) + "\n", mode=0o600)
    for name, (enrolled, key_hash) in wanted.items():
        if name in record:
            console.print(f"enrolled {name} (registered before this start)")
            continue
        result = group.run(["flwr", "supernode", "register", str(enrolled.public_key), CONNECTION, "--name", name])
        output = result.stdout + result.stderr
        if result.returncode != 0 and _KEY_IN_USE not in output:
            raise RunFailed(f"registering {name}'s key failed: {output[-800:]}")
        if result.returncode != 0:  # registered before our record existed, or unregistered once (never reusable)
            console.print(f"[yellow]{name}: the SuperLink already knows this key; if {name} cannot connect, its "
                          f"key was unregistered earlier and it needs a new key pair[/yellow]")
        found = _REGISTERED.search(output)
        record[name] = {"node_id": int(found.group(1)) if found else None, "key_sha256": key_hash}
        atomic_write_text(record_file, json.dumps(record, indent=1) + "\n", mode=0o600)
        audit("institution_enrolled", {"institution": name, "public_key": str(enrolled.public_key),
                                       "node_id": record[name]["node_id"]})
        console.print(f"enrolled {name} ({enrolled.public_key.name})")


def _unregister(group: ProcessGroup, name: str, entry: dict, audit: AuditLog) -> None:
    if entry.get("node_id") is None:
        raise RunFailed(f"{name} is no longer enrolled, but its node id is unknown; unregister it with "
                        f"`flwr supernode ls` and `flwr supernode unregister NODE_ID`")
    result = group.run(["flwr", "supernode", "unregister", str(entry["node_id"]), CONNECTION])
    if result.returncode != 0:
        raise RunFailed(f"unregistering {name} failed: {(result.stdout + result.stderr)[-800:]}")
    audit("institution_unenrolled", {"institution": name, "node_id": entry["node_id"]})
    console.print(f"unenrolled {name} (node {entry['node_id']}); a key once registered cannot be registered again")


def _tls_arguments(args: argparse.Namespace) -> tuple[Path, Path, Path] | None:
    """(CA, certificate, key) from ``--tls-dir`` or Flower's three ``--ssl-*`` flags; None: insecure."""
    flower_style = (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile)
    if args.tls_dir is not None or args.insecure:
        if any(flower_style):
            raise ConfigError("give --tls-dir or the --ssl-* files, not both (and no --ssl-* with --insecure)")
        return tls_files(args.tls_dir) if args.tls_dir else None
    if not all(flower_style):
        raise ConfigError("--ssl-certfile needs --ssl-keyfile and --ssl-ca-certfile")
    missing = [str(p) for p in flower_style if not p.is_file()]
    if missing:
        raise ConfigError(f"not found: {', '.join(missing)}")
    return flower_style


def serve(config_file: Path, *, tls: tuple[Path, Path, Path] | None, host: str, port: int, rounds: int | None,
          resume: bool, timeout: float) -> list[RoundMetrics]:
    config = load_federation(config_file)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tls and not config.enrolled:
        raise ConfigError(f"{config_file}: enrolled: no institution is enrolled, so none could connect")
    audit = AuditLog(out / AUDIT_FILE)
    group = ProcessGroup(out / ".flwr-server")
    superlink_dir = out / SUPERLINK_DIR
    superlink_dir.mkdir(mode=0o700, exist_ok=True)
    try:
        # The database persists (past runs, registered keys) so that Flower's commands and a restart
        # see the same SuperLink; enrolment is brought in step with the file below.
        superlink = group.start(superlink_command(host=host, port=port, database=superlink_dir / "state.db", tls=tls),
                                log_file=out / "superlink.log")
        wait_for_port(port, timeout=60, process=superlink)
        write_connection(group.flwr_home, CONNECTION, f"127.0.0.1:{port}", root_certificates=tls[0] if tls else None)
        audit("server_started", {"address": f"{host}:{port}", "tls": tls is not None,
                                 "supernode_auth": tls is not None})
        console.print(f"SuperLink listening on {host}:{port} ({'TLS, node authentication' if tls else 'INSECURE'})")
        if tls:
            register_institutions(group, config, audit, superlink_dir / ENROLLED_FILE)
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
    security.add_argument("--ssl-certfile", type=Path, metavar="CRT",
                          help="as flower-superlink: the server certificate (with --ssl-keyfile, --ssl-ca-certfile)")
    security.add_argument("--insecure", action="store_true",
                          help="no TLS, no node authentication: local experiments only")
    parser.add_argument("--ssl-keyfile", type=Path, metavar="KEY", help="as flower-superlink: the server key")
    parser.add_argument("--ssl-ca-certfile", type=Path, metavar="CA", help="as flower-superlink: the CA certificate")
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
        tls = _tls_arguments(args)
        history = serve(args.config, tls=tls, host=args.host, port=args.port, rounds=args.rounds,
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
