"""Scale: simulated federations of many institutions (wall time per round, peak memory of the whole
process tree) and the server's aggregation throughput for many updates.

    .venv/bin/python bench/scale.py [--institutions 10 50 100] [--rounds 2] [--updates 10 100 1000]

Federations: the tiny model (configs/tiny.yaml) and training, one task (promoter), ``--n-per-task``
records per institution (default 30, the generator's minimum: 24 train, 3 val, 3 test), species
cycling over the five the generator knows, DP on (epsilon 8 planned over the run). Flower's
simulation engine with one CPU per simulated ClientApp (what ``helixfed simulate`` asks for), so
on 2 cores two institutions train at a time. Memory: every 0.5 s, the resident set of every
process of the run (SuperLink, SuperExec, the ServerApp, Ray's daemons and actors; found by the
run's FLWR_HOME in their environment) is summed; RSS counts shared pages (torch's libraries) once
per process, PSS splits them between processes, so the truth lies nearer PSS.

Aggregation: ``server.aggregation.aggregate`` in this process, species-balanced mode, K updates of
the demo model's size (configs/demo.yaml: every parameter float32, every task head trained by
every update, the worst case); throughput is K x update bytes / seconds (best of a few repeats).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from privacy_utility import (  # noqa: E402
    ROOT,
    federation_variant,
    load_average,
    load_base,
    run_federation,
    with_privacy,
    write_config,
)

from common.protocol import Status  # noqa: E402

TINY = ROOT / "configs" / "tiny.yaml"
SPECIES = ("human", "mouse", "fruit_fly", "yeast", "e_coli")
SAMPLE_SECONDS = 0.5


# ---------------------------------------------------------------- memory of a process tree


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from /proc/<pid>/smaps_rollup; (0, 0) once it is gone."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def processes_with(needle: bytes) -> list[int]:
    """Live processes whose environment holds ``needle`` (a ``NAME=value`` entry)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


class MemorySampler(threading.Thread):
    """Samples the summed RSS and PSS of every process carrying one environment entry; keeps peaks."""

    def __init__(self, needle: str):
        super().__init__(daemon=True)
        self.needle = needle.encode()
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_SECONDS):
            pids = processes_with(self.needle)
            sizes = [memory_kib(pid) for pid in pids]
            self.peak_rss = max(self.peak_rss, sum(r for r, _ in sizes))
            self.peak_pss = max(self.peak_pss, sum(p for _, p in sizes))
            self.peak_processes = max(self.peak_processes, len(pids))

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------- simulated federations


def scale_config(base: dict, k: int, work: Path, *, rounds: int, n_per_task: int) -> dict:
    institutions = [{"name": f"site-{i:03d}", "species": SPECIES[i % len(SPECIES)], "tasks": ["promoter"]}
                    for i in range(k)]
    config = dict(base, tasks=["promoter"], institutions=institutions)
    config = federation_variant(config, name=f"scale-{k}", out_dir=work / f"k{k}", data_dir=work / f"data-{k}",
                                rounds=rounds, n_per_task=n_per_task, central_n=10)
    config["federation"].update(min_train_institutions=k, min_available_institutions=k, round_timeout_s=3600)
    return with_privacy(config, 8.0, rounds)


def measure_federation(base: dict, k: int, work: Path, args: argparse.Namespace) -> dict:
    config = scale_config(base, k, work, rounds=args.rounds, n_per_task=args.n_per_task)
    path = write_config(config, work / f"k{k}.yaml")
    sampler = MemorySampler(f"FLWR_HOME={Path(config['output_dir']) / '.flwr'}")  # set by server.ops.simulate
    sampler.start()
    try:
        history, seconds = run_federation(path, timeout=args.timeout)
    finally:
        sampler.stop()
    rounds = [h.wall_seconds for h in history[1:]]
    trained = [len(h.with_status(Status.TRAINED)) for h in history[1:]]
    print(f"{k} institutions: {seconds:.0f} s", file=sys.stderr)
    return {"k": k, "seconds": seconds, "rounds": rounds, "trained": min(trained), "rss": sampler.peak_rss,
            "pss": sampler.peak_pss, "processes": sampler.peak_processes}


def federation_table(rows: list[dict]) -> list[str]:
    """Round 1 apart: it pays each Ray actor's imports and each institution's first data load."""
    lines = ["| institutions | rounds | trained per round (min) | wall s (whole run) | round 1 s | later rounds s "
             "(mean) | ms per institution, later rounds | peak RSS sum GiB | peak PSS sum GiB | processes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        later = float(np.mean(r["rounds"][1:])) if len(r["rounds"]) > 1 else None
        later_cells = f"{later:.1f} | {1000 * later / r['k']:.0f}" if later is not None else "– | –"
        lines.append(f"| {r['k']} | {len(r['rounds'])} | {r['trained']} | {r['seconds']:.0f} | {r['rounds'][0]:.1f} | "
                     f"{later_cells} | {r['rss'] / 2**20:.2f} | {r['pss'] / 2**20:.2f} | {r['processes']} |")
    return lines


# ---------------------------------------------------------------- aggregation throughput


def demo_weights() -> dict[str, np.ndarray]:
    import torch

    from common.model import GenomicTransformer, ModelConfig

    demo = load_base()
    torch.manual_seed(0)
    model = GenomicTransformer(ModelConfig(**demo["model"]), tasks=tuple(demo["tasks"]))
    return {name: value.numpy().copy() for name, value in model.state_dict().items()}


def make_updates(previous: dict[str, np.ndarray], k: int, tasks: list[str], seed: int = 0) -> list:
    """K distinct updates (each its own arrays, as K replies would be), species cycling."""
    from server.aggregation import Update

    rng = np.random.default_rng(seed)
    updates = []
    for i in range(k):
        weights = {n: (v + rng.standard_normal(v.shape, dtype=np.float32) * 1e-3) for n, v in previous.items()}
        updates.append(Update(f"site-{i:04d}", SPECIES[i % 4], weights, {t: 1600 for t in tasks}))
    return updates


def measure_aggregation(counts: list[int], repeats: int) -> list[dict]:
    from server.aggregation import aggregate

    previous = demo_weights()
    update_bytes = sum(v.nbytes for v in previous.values())
    tasks = load_base()["tasks"]
    rows = []
    for k in counts:
        updates = make_updates(previous, k, tasks)
        times = []
        for _ in range(repeats if k < 1000 else max(1, repeats // 2)):
            start = time.perf_counter()
            aggregate(updates, previous, mode="species_balanced")
            times.append(time.perf_counter() - start)
        best = min(times)
        rows.append({"k": k, "seconds": best, "bytes": k * update_bytes, "update_bytes": update_bytes,
                     "tensors": len(previous), "repeats": len(times)})
        del updates
    return rows


def aggregation_table(rows: list[dict]) -> list[str]:
    lines = ["| updates K | MB in | best s | GB/s | ms per update | repeats |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['bytes'] / 1e6:.1f} | {r['seconds']:.3f} | {r['bytes'] / r['seconds'] / 1e9:.3f} "
                     f"| {1000 * r['seconds'] / r['k']:.2f} | {r['repeats']} |")
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--institutions", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-per-task", type=int, default=30)
    parser.add_argument("--updates", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per federation, seconds")
    parser.add_argument("--work", type=Path, default=None, help="keep configs and runs here (default: a temp dir)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started, load_before = time.monotonic(), load_average()
    aggregation = measure_aggregation(args.updates, args.repeats)
    base = load_base(TINY)
    with tempfile.TemporaryDirectory(prefix="helixfed-scale-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        federations = [measure_federation(base, k, work, args) for k in args.institutions]
    print(f"# Scale\n\n## Simulated federations (tiny model, promoter only, {args.n_per_task} records per "
          f"institution, DP on, {args.rounds} rounds, 1 CPU per ClientApp)\n")
    print("\n".join(federation_table(federations)))
    print("\nA round is the server's view: train messages out and back, aggregation, federated evaluation, central "
          "evaluation, checkpoint. The whole run adds starting the SuperLink, Ray and the ServerApp and stopping them.")
    update = aggregation[0]
    print(f"\n## Aggregation throughput (server.aggregation.aggregate, demo model: {update['tensors']} tensors, "
          f"{update['update_bytes'] / 1e3:.0f} kB per update, float32, species-balanced)\n")
    print("\n".join(aggregation_table(aggregation)))
    print(f"\nload average (1/5/15 min) before {load_before}, after {load_average()}; "
          f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
