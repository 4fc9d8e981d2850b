"""The deployment engine for real: `helixfed server` (SuperLink with TLS and SuperNode
authentication) and `helixfed client` agents as separate processes on loopback."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from client.privacy.ledger import PrivacyLedger
from common.synthetic.cli import synth_from_config
from server.ops.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
MARKER = "HELIXFED_TEST_PROCESS"
ROGUE = "rogue-lab"  # has a key pair, but the federation does not enrol it
pytestmark = pytest.mark.timeout(600)


class Processes:
    """Every process a test starts carries a marker in its environment; teardown kills them all."""

    def __init__(self):
        self.marker = uuid.uuid4().hex

    def start(self, *args: str, log: Path, who: str = "") -> subprocess.Popen:
        env = {**os.environ, MARKER: f"{self.marker}:{who}"}
        return subprocess.Popen([sys.executable, "-m", "common.cli", *args], env=env, cwd=ROOT,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def pids(self, who: str | None = None) -> list[int]:
        needle = f"{MARKER}={self.marker}:{who or ''}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    environ = (entry / "environ").read_bytes().split(b"\0")
                    stat = (entry / "stat").read_text().split()
                    if stat[2] != "Z" and any(v.startswith(needle) for v in environ):
                        found.append(int(entry.name))
        return found

    def kill(self, who: str | None = None) -> None:
        for pid in self.pids(who):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def processes():
    tracker = Processes()
    yield tracker
    tracker.kill()
    time.sleep(0.5)
    assert tracker.pids() == [], "a process started by the test outlived it"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Certificates for three institutions, their data, and one institution file each."""
    root = tmp_path_factory.mktemp("deployment")
    synth_from_config(TINY, root / "data")
    subprocess.run([sys.executable, "-m", "common.cli", "certs", "--out", str(root / "certs"), "--server-name",
                    "localhost", "--institutions", f"oslo-uh,jackson-lab,ecoli-reference,{ROGUE}"], check=True, cwd=ROOT)
    return root


def write_institutions(site: Path, tmp: Path) -> None:
    """One institution file each, with a ledger of its own under this test's directory."""
    for entry in yaml.safe_load(TINY.read_text())["institutions"]:
        entry.update(data_dir=str(site / "data" / entry["name"]), state_dir=f"state/{entry['name']}", device="cpu")
        (tmp / f"{entry['name']}.yaml").write_text(yaml.safe_dump(entry))


def federation(site: Path, out: Path, *, enrolled: list[str], rounds: int, available: int,
               secure: dict | None = None) -> Path:
    config = yaml.safe_load(TINY.read_text())
    if secure is not None:
        config["aggregation"]["secure"] = secure
    config.pop("institutions"), config.pop("data")
    config.update(name="deployed", output_dir=str(out), enrolled=[
        {"name": n, "public_key": str(site / "certs" / "institutions" / f"{n}.pub")} for n in enrolled])
    config["central_evaluation"]["data_dir"] = str(site / "data" / "central")
    config["federation"].update(rounds=rounds, min_available_institutions=available, min_train_institutions=2,
                                round_timeout_s=300)
    path = out.parent / "federation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_server(processes, site, config: Path, port: int, log: Path) -> subprocess.Popen:
    server = processes.start("server", "--config", str(config), "--tls-dir", str(site / "certs"),
                             "--host", "127.0.0.1", "--port", str(port), log=log, who="server")
    deadline = time.monotonic() + 60
    while "waiting for" not in log.read_text(errors="replace"):
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    return server


def start_agent(processes, site, name: str, port: int, tmp: Path, wait: float = 90) -> subprocess.Popen:
    return processes.start("client", "--institution", str(tmp / f"{name}.yaml"), "--server", f"localhost:{port}",
                           "--root-certificates", str(site / "certs" / "ca.crt"),
                           "--key", str(site / "certs" / "institutions" / name), "--activation-wait", str(wait),
                           "--port", str(free_port()), log=tmp / f"{name}.log", who=name)


def audit_events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]


# One deployment, every check: a server start and each round cost a minute of CPU on 2 cores
# (a process per message), so the refusal, the kill and the clean stop share one run.
def test_a_deployed_run_refuses_an_unregistered_key_survives_a_killed_agent_and_stops_cleanly(
        site, tmp_path, processes):
    out, port = tmp_path / "out", free_port()
    names = ["oslo-uh", "jackson-lab", "ecoli-reference"]
    write_institutions(site, tmp_path)
    rogue_entry = yaml.safe_load((tmp_path / "ecoli-reference.yaml").read_text())
    rogue_entry.update(name=ROGUE, state_dir=f"state/{ROGUE}")  # a key the server never enrolled
    (tmp_path / f"{ROGUE}.yaml").write_text(yaml.safe_dump(rogue_entry))
    config = federation(site, out, enrolled=names, rounds=3, available=3)
    server = start_server(processes, site, config, port, tmp_path / "server.log")
    agents = {name: start_agent(processes, site, name, port, tmp_path) for name in names}
    rogue = start_agent(processes, site, ROGUE, port, tmp_path, wait=0)
    assert rogue.wait(timeout=120) != 0
    assert "not registered" in (tmp_path / f"{ROGUE}.log").read_text()

    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:  # round 1 done
        assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
        time.sleep(0.5)
    # Operable with Flower's tools while it runs (issue 15): `helixfed status` and `flwr ls` reach it
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "common.cli", "status", "--server", f"localhost:{port}", "--root-certificates",
         str(site / "certs" / "ca.crt"), "--json"], capture_output=True, text=True, timeout=120, check=True).stdout)
    assert status["run"]["status"].startswith("running") and status["round"] >= 1 and status["rounds"] == 3
    assert sum(n["status"] == "online" for n in status["nodes"]) == 3 and len(status["nodes"]) == 3
    assert set(status["epsilon"]) == set(names)
    run_id = status["run"]["run_id"]
    processes.kill("ecoli-reference")  # the machine dies: agent, SuperNode and app, all at once
    state = tmp_path / "state" / "ecoli-reference"
    ledger = PrivacyLedger.load(state)  # intact, not corrupt
    spent = ledger.epsilon()
    assert len(ledger.rounds) in (1, 2) and spent > 0
    time.sleep(2)
    agents["ecoli-reference"] = start_agent(processes, site, "ecoli-reference", port, tmp_path)

    assert server.wait(timeout=500) == 0, (tmp_path / "server.log").read_text()[-3000:]
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["round"] for line in history] == [0, 1, 2, 3]
    assert {"oslo-uh", "jackson-lab"} <= {n for n, r in history[2]["institutions"].items() if r["status"] == "trained"}
    after = PrivacyLedger.load(state)
    assert after.epsilon() >= spent and [r.round for r in after.rounds][: len(ledger.rounds)] == \
        [r.round for r in ledger.rounds]  # the restarted agent went on from its ledger
    assert history[-1]["institutions"]["ecoli-reference"]["status"] == "trained"
    assert history[-1]["epsilon"]["ecoli-reference"] == pytest.approx(after.epsilon(), rel=1e-9)
    assert set(history[-1]["institutions"]) == set(names)
    assert (out / "final" / "model.safetensors").is_file() and (out / "report.md").is_file()

    events = audit_events(out)
    kinds = [e["event"] for e in events]
    assert kinds.count("institution_enrolled") == 3 and kinds.count("institution_connected") >= 3
    trained = [e["institution"] for e in events if e["event"] == "trained"]
    assert trained.count("oslo-uh") == 3 and 2 <= trained.count("ecoli-reference") <= len(after.rounds)
    assert "checkpoint_written" in kinds and "run_finished" in kinds
    assert all(e["institution"] != ROGUE for e in events if "institution" in e)
    for agent in agents.values():
        agent.send_signal(signal.SIGTERM)  # agents stop cleanly, taking their SuperNodes with them
        assert agent.wait(timeout=30) is not None

    # A restart keeps the SuperLink's database: the finished run is still listed, enrolment is kept
    # (the same keys are not registered twice), and Flower's own `flwr ls` reaches it.
    assert (out / "superlink" / "state.db").is_file()
    server = start_server(processes, site, config, port, tmp_path / "server-again.log")
    assert (tmp_path / "server-again.log").read_text().count("registered before this start") == 3
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "localhost:{port}"\n'
        f'root-certificates = "{site / "certs" / "ca.crt"}"\n')
    listed = subprocess.run([str(Path(sys.executable).parent / "flwr"), "ls", "--format", "json"], env={**os.environ, "FLWR_HOME": str(flwr_home)},
                            capture_output=True, text=True, timeout=60)
    runs = {r["run-id"]: r["status"] for r in json.loads(listed.stdout)["runs"]}
    assert runs[run_id] == "finished:completed", listed.stdout  # the run from before the restart
    assert [e["event"] for e in audit_events(out)].count("institution_enrolled") == 3
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) is not None


def test_status_reads_the_latest_round_and_epsilon_from_flowers_log():
    from server.ops.status import latest_round

    log = ("INFO :      round 0/3 (initial model)  central: promoter 0.000\n"
           "INFO :      round 1/3 19.9 s  institutions: 2  central: promoter 0.100\n"
           "    epsilon: oslo-uh 4.64, jackson-lab 4.60\n"
           "INFO :      configure_train: Sampled 2 nodes (out of 2)\n"
           "INFO :      round 2/3 3.5 s  institutions: 1  central: promoter 0.200  refused: jackson-lab\n"
           "    epsilon: oslo-uh 6.48, jackson-lab 4.60\n")
    assert latest_round(log) == {"round": 2, "rounds": 3, "institutions_trained": 1,
                                 "epsilon": {"oslo-uh": 6.48, "jackson-lab": 4.60}}
    assert latest_round("INFO : round 0/3 (initial model)") == {}


def test_flowers_flag_names_are_accepted(tmp_path):
    import argparse

    from client.commands.supernode import add_client_parser
    from server.ops.deploy import add_server_parser

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    add_client_parser(commands), add_server_parser(commands)
    client = parser.parse_args(["client", "--institution", "i.yaml", "--superlink", "fl.example.org:9092",
                                "--root-certificates", "ca.crt", "--auth-supernode-private-key", "key"])
    assert client.server == "fl.example.org:9092" and client.key == Path("key")
    files = [tmp_path / n for n in ("ca.crt", "server.crt", "server.key")]
    for f in files:
        f.write_text("x")
    server = parser.parse_args(["server", "--config", "f.yaml", "--ssl-ca-certfile", str(files[0]),
                                "--ssl-certfile", str(files[1]), "--ssl-keyfile", str(files[2])])
    from server.ops.deploy import _tls_arguments
    assert _tls_arguments(server) == tuple(files)
    from common.config import ConfigError
    half = parser.parse_args(["server", "--config", "f.yaml", "--ssl-certfile", str(files[1])])
    with pytest.raises(ConfigError, match="--ssl-certfile needs --ssl-keyfile and --ssl-ca-certfile"):
        _tls_arguments(half)
