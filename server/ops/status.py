"""``helixfed status``: a running server at a glance — who is connected, the round, ε per institution.

It asks the SuperLink the way Flower's own commands do (``flwr supernode ls``, ``flwr ls``, ``flwr
log``; in Flower 1.42 they share the SuperLink's address, verified with the federation's CA), so it
works from any machine that may reach the server, and shows only what the server itself may know:
the round and ε come from the ServerApp's per-round line in Flower's log.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from server.ops.processes import ProcessGroup, write_connection

CONNECTION = "helixfed-status"
_ROUND = re.compile(r"round (\d+)/(\d+) .*?institutions: (\d+)")
_EPSILON = re.compile(r"epsilon: (.*)$")
_PAIR = re.compile(r"([A-Za-z0-9_.-]+) ([0-9.]+)")


class StatusError(RuntimeError):
    """The server could not be asked; the message says why."""


def _flwr_json(group: ProcessGroup, *args: str) -> dict:
    result = group.run(["flwr", *args, CONNECTION, "--format", "json"], timeout=60)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as err:
        raise StatusError(f"`flwr {' '.join(args)}` failed: {(result.stdout + result.stderr).strip()[-500:]}") from err


def latest_round(log_text: str) -> dict:
    """The last ``round N/M`` line the ServerApp logged, with the ε line that follows it."""
    found: dict = {}
    lines = log_text.splitlines()
    for index, line in enumerate(lines):
        match = _ROUND.search(line)
        if match:
            found = {"round": int(match.group(1)), "rounds": int(match.group(2)),
                     "institutions_trained": int(match.group(3)), "epsilon": {}}
            following = lines[index + 1] if index + 1 < len(lines) else ""
            eps = _EPSILON.search(following)
            if eps:
                found["epsilon"] = {name: float(value) for name, value in _PAIR.findall(eps.group(1))}
    return found


def server_status(address: str, *, root_certificates: Path | None) -> dict:
    """Connected SuperNodes, the current (else the newest) run and its latest round.

    Raises:
        StatusError: Flower's commands could not reach the server or answered no JSON.
    """
    with tempfile.TemporaryDirectory(prefix="helixfed-status-") as home:
        group = ProcessGroup(Path(home))
        write_connection(group.flwr_home, CONNECTION, address, root_certificates=root_certificates)
        nodes = _flwr_json(group, "supernode", "ls").get("nodes", [])
        runs = _flwr_json(group, "ls").get("runs", [])
        running = [r for r in runs if str(r.get("status", "")).startswith("running")]
        run = (running or sorted(runs, key=lambda r: str(r.get("pending-at", ""))))[-1] if runs else None
        progress = {}
        if run is not None:
            log = group.run(["flwr", "log", str(run["run-id"]), CONNECTION, "--show"], timeout=60)
            progress = latest_round(log.stdout + log.stderr)
    return {"address": address, "nodes": [{"node_id": n.get("node-id"), "status": n.get("status"),
                                           "online_at": n.get("online-at")} for n in nodes],
            "run": None if run is None else {"run_id": run.get("run-id"), "status": run.get("status"),
                                             "elapsed": run.get("elapsed")},
            **progress}


def add_status_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="who is connected to a running server, its round, epsilon per institution")
    parser.add_argument("--server", "--superlink", dest="server", required=True, metavar="HOST:PORT",
                        help="the server's address (the one institutions connect to)")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--root-certificates", type=Path, metavar="CA", help="the federation's ca.crt")
    security.add_argument("--insecure", action="store_true", help="a server started with --insecure")
    parser.add_argument("--json", action="store_true", help="one machine-readable JSON object")
    parser.set_defaults(func=run_status_command)


def run_status_command(args: argparse.Namespace) -> int:
    if args.root_certificates is not None and not args.root_certificates.is_file():
        print(f"helixfed status: error: --root-certificates {args.root_certificates}: file not found", file=sys.stderr)
        return 1
    try:
        status = server_status(args.server, root_certificates=args.root_certificates)
    except StatusError as err:
        print(f"helixfed status: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    console = Console()
    online = [n for n in status["nodes"] if n["status"] == "online"]
    console.print(f"{status['address']}: {len(online)} institution(s) connected of {len(status['nodes'])} registered")
    run = status["run"]
    if run is None:
        console.print("no run yet")
        return 0
    where = (f"round {status['round']}/{status['rounds']} done" if "round" in status else "no round finished yet")
    console.print(f"run {run['run_id']}: {run['status']}, {where}")
    if status.get("epsilon"):
        table = Table("institution", "ε spent (its ledger, as reported)")
        for name, epsilon in sorted(status["epsilon"].items()):
            table.add_row(name, f"{epsilon:.2f}")
        console.print(table)
    return 0
