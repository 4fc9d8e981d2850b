"""A secure round in deployment (aggregation.secure over TLS with SuperNode authentication), beside a
plain one: does it work, and what does it cost per round? (issue 16)

Two institutions of configs/tiny.yaml as separate `helixfed client` agents and `helixfed server` on
loopback, with certificates from `helixfed certs` and enrolled keys, exactly as tests/test_deployment.py
runs them (its helpers are used here); one round plain, then one round secure, on the same data. Each run
is checked as the suite's deployment test checks a run (exit code, every institution trained, each
ledger's ε is what the server reports, the audit log's secure_round names both), and its round time
recorded. Too slow for the test suite (each message is a ClientApp process start in Flower 1.42, and a
secure round is five messages per institution); the suite runs secure rounds in Flower's simulation
engine and over a local grid (tests/test_secure_aggregation.py).

    .venv/bin/python bench/secure_deployment.py

Prints a markdown report on stdout (``bench/run_all.py`` stores it in ``bench/results/``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_deployment import (  # noqa: E402
    TINY,
    Processes,
    audit_events,
    federation,
    start_agent,
    start_server,
    write_institutions,
)

from client.privacy.ledger import PrivacyLedger  # noqa: E402
from common.synthetic.cli import synth_from_config  # noqa: E402
from server.ops.processes import free_port  # noqa: E402

NAMES = ["oslo-uh", "jackson-lab"]


def one_run(site: Path, work: Path, *, secure: bool) -> dict:
    work.mkdir()
    processes = Processes()
    try:
        out, port = work / "out", free_port()
        write_institutions(site, work)
        config = federation(site, out, enrolled=NAMES, rounds=1, available=2,
                            secure={"timeout_s": 240} if secure else None)
        started = time.monotonic()
        server = start_server(processes, site, config, port, work / "server.log")
        agents = [start_agent(processes, site, name, port, work) for name in NAMES]
        code = server.wait(timeout=900)
        wall = time.monotonic() - started
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        last = history[-1]
        statuses = {n: r["status"] for n, r in last["institutions"].items()}
        ledgers_agree = all(abs(last["epsilon"][n] - PrivacyLedger.load(work / "state" / n).epsilon()) < 1e-9
                            for n in NAMES)
        in_sum = [e["in_sum"] for e in audit_events(out) if e["event"] == "secure_round"]
        for agent in agents:
            agent.terminate()
        ok = (code == 0 and statuses == dict.fromkeys(NAMES, "trained") and ledgers_agree
              and (in_sum == [sorted(NAMES)] if secure else in_sum == []))
        return {"ok": ok, "code": code, "statuses": statuses, "round_s": last["wall_seconds"], "wall_s": wall,
                "in_sum": in_sum}
    finally:
        processes.kill()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="secure-deploy-") as tmp:
        site = Path(tmp)
        synth_from_config(TINY, site / "data")
        subprocess.run([sys.executable, "-m", "common.cli", "certs", "--out", str(site / "certs"), "--server-name",
                        "localhost", "--institutions", ",".join(NAMES)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        plain = one_run(site, site / "plain", secure=False)
        secure = one_run(site, site / "secure", secure=True)
    print("# A secure round in deployment (bench/secure_deployment.py)\n")
    print("Two institutions of configs/tiny.yaml, `helixfed server` and two `helixfed client` agents on loopback, "
          "TLS and SuperNode authentication, one round each way on the same data.\n")
    print("| round | checks | statuses | secure sum | round (s) | server start to exit (s) |")
    print("|---|---|---|---|---|---|")
    for name, r in (("plain", plain), ("secure", secure)):
        print(f"| {name} | {'pass' if r['ok'] else 'FAIL (exit ' + str(r['code']) + ')'} | "
              f"{', '.join(f'{k} {v}' for k, v in r['statuses'].items())} | {r['in_sum'][0] if r['in_sum'] else '–'} | "
              f"{r['round_s']:.0f} | {r['wall_s']:.0f} |")
    print(f"\nA secure round took {secure['round_s'] / plain['round_s']:.1f}× a plain one here.")
    if not (plain["ok"] and secure["ok"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
