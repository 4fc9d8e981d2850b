"""The CPU benchmark suite (`make bench`): every CPU bench script in sequence, default settings.

    .venv/bin/python bench/run_all.py [--only privacy_utility scale ...] [--timeout 1200]

Each script's stdout (a markdown report) is written to ``bench/results/<script>.md`` under a header
giving the command, the date, the machine and its load; its stderr (progress) is kept in a
temporary file and its tail shown only when the script fails. A failed script does not overwrite
its last good result. The suite is sized for at most 30 minutes on 2 CPU cores with nothing else
running; the summary says how long it took. ``bench/gpu.sh`` is not part of it (it needs a GPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
# In order: the quick single-process measurements first, the federations last.
SCRIPTS = ("model_step.py", "dp_overhead.py", "privacy_audit.py", "serve_latency.py", "privacy_utility.py",
           "species_weighting.py", "scale.py", "deploy_overhead.py", "secure_aggregation.py",
           "secure_deployment.py")
BUDGET_SECONDS = 30 * 60


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = memory_gib()
    ram = f"{memory:.0f} GiB RAM" if memory else "RAM unknown"
    return (f"{cpu_model()}, {cores} cores available, {ram}, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {version('torch')}, opacus {version('opacus')}, "
            f"flwr {version('flwr')}")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def header(script: str, *, started: dt.datetime, seconds: float, load_before: str, load_after: str) -> str:
    return (f"<!-- written by bench/run_all.py; rerun with `.venv/bin/python bench/run_all.py --only "
            f"{Path(script).stem}` -->\n"
            f"- command: `.venv/bin/python bench/{script}` (default settings)\n"
            f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"- machine: {machine()}\n"
            f"- load average (1/5/15 min): {load_before} at start, {load_after} at end "
            "(other work on the machine shows here)\n"
            f"- wall time: {seconds:.0f} s\n\n")


def run_script(script: str, timeout: float, results: Path = RESULTS) -> dict:
    """Run one script; on success write its result file. Returns status, seconds and a message."""
    path = BENCH / script
    if not path.is_file():
        return {"status": "missing", "seconds": 0.0, "message": f"{path.relative_to(ROOT)} does not exist"}
    started, load_before, clock = dt.datetime.now(dt.UTC), load_average(), time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        try:
            done = subprocess.run([sys.executable, str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                                  text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "seconds": time.monotonic() - clock,
                    "message": f"killed after {timeout:.0f} s"}
        seconds = time.monotonic() - clock
        if done.returncode != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace")[-2500:]
            return {"status": f"failed ({done.returncode})", "seconds": seconds, "message": tail}
    results.mkdir(parents=True, exist_ok=True)
    result = results / f"{Path(script).stem}.md"
    result.write_text(header(script, started=started, seconds=seconds, load_before=load_before,
                             load_after=load_average()) + done.stdout)
    return {"status": "ok", "seconds": seconds, "message": str(result)}


def summary_cell(outcome: dict) -> str:
    """The result file, or the line of the error that stopped the script (its last "...Error:" line)."""
    lines = [line.strip() for line in outcome["message"].strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":", 1)[0] or "Exception" in line.split(":", 1)[0]]
    return ((errors or lines or [""])[-1])[:200].replace("|", "/")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="SCRIPT", help="run only these (name with or without .py)")
    parser.add_argument("--timeout", type=float, default=20 * 60, help="per script, seconds")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the result files go")
    args = parser.parse_args()
    if args.only:
        wanted = {name.removesuffix(".py") + ".py" for name in args.only}
        unknown = sorted(wanted - set(SCRIPTS))
        if unknown:
            parser.error(f"unknown scripts {unknown}; the suite runs {', '.join(SCRIPTS)}")
        args.scripts = [s for s in SCRIPTS if s in wanted]
    else:
        args.scripts = list(SCRIPTS)
    return args


def main() -> int:
    args = parse_args()
    print(f"machine: {machine()}; load average {load_average()}", flush=True)
    started, outcomes = time.monotonic(), {}
    for script in args.scripts:
        print(f"running {script} …", flush=True)
        outcomes[script] = run_script(script, args.timeout, args.results)
        outcome = outcomes[script]
        print(f"  {outcome['status']} in {outcome['seconds']:.0f} s: {outcome['message']}", flush=True)
    total = time.monotonic() - started
    print("\n| script | status | wall s | result |\n|---|---|---|---|")
    for script, outcome in outcomes.items():
        print(f"| {script} | {outcome['status']} | {outcome['seconds']:.0f} | {summary_cell(outcome)} |")
    within = "within" if total <= BUDGET_SECONDS else "OVER"
    print(f"\ntotal {total / 60:.1f} min ({within} the {BUDGET_SECONDS // 60} min budget); "
          f"load average now {load_average()}")
    return 0 if all(o["status"] == "ok" for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
