"""Latency and throughput of ``helixfed serve`` on CPU: concurrent clients, each sending Predict
batches (default 32 sequences x 200 bp) over loopback gRPC.

    python bench/serve_latency.py [--checkpoint DIR] [--clients 1 4 16] [--requests 20]
                                  [--batch 32] [--length 200] [--task promoter] [--max-workers 4]

The server runs in its own process (``python -m server.service.server``), as in deployment, so
clients and server do not share an interpreter lock. Without ``--checkpoint`` a model of the
default configuration (``ModelConfig()``) with random weights is served: latency depends on the
architecture, not on the weights. Each client sends ``--requests`` requests after two warm-up
requests, so a run is bounded in count; its sequences are drawn at random from a fixed seed.
Prints one markdown table row per client count: p50/p99/mean latency per request and throughput
in sequences per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.checkpoint import save_checkpoint  # noqa: E402
from common.model import GenomicTransformer, ModelConfig  # noqa: E402
from server.service import helixfed_pb2 as pb  # noqa: E402
from server.service import helixfed_pb2_grpc as pb_grpc  # noqa: E402

WARMUP_REQUESTS = 2


def default_checkpoint(directory: Path) -> Path:
    """A checkpoint of ``ModelConfig()`` with random weights (seed 0)."""
    torch.manual_seed(0)
    config = ModelConfig()
    model = GenomicTransformer(config)
    return save_checkpoint(directory / "default", weights=model.state_dict(), model_config=config,
                           tasks=model.tasks, round=0)


def start_server(checkpoint: Path, *, batch: int, max_workers: int, max_rpcs: int) -> tuple[subprocess.Popen, str]:
    """The server process and its address, once it prints its banner."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server.service.server", "--checkpoint", str(checkpoint), "--port", "0",
         "--max-batch", str(batch), "--max-workers", str(max_workers), "--max-concurrent-rpcs", str(max_rpcs),
         "--max-rpcs-per-client", str(max_workers)],  # the simulated clients all share 127.0.0.1
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    banner = process.stdout.readline()
    if "listening on " not in banner:
        process.kill()
        raise RuntimeError(f"server did not start: {banner!r}")
    return process, banner.split("listening on ")[1].split()[0]


def random_batches(*, count: int, batch: int, length: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("ACGT"))
    return [["".join(letters[rng.integers(0, 4, length)]) for _ in range(batch)] for _ in range(count)]


def client_loop(address: str, task: str, batches: list[list[str]], latencies: list[float],
                errors: list[BaseException]) -> None:
    """Send every batch in turn on one channel; the first WARMUP_REQUESTS are not timed."""
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.HelixfedStub(channel)
            for i, sequences in enumerate(batches):
                start = time.perf_counter()
                stub.Predict(pb.PredictRequest(task=task, sequences=sequences), timeout=300)
                if i >= WARMUP_REQUESTS:
                    latencies.append(time.perf_counter() - start)
    except BaseException as err:  # reported by the main thread
        errors.append(err)


def measure(address: str, *, clients: int, requests: int, batch: int, length: int, task: str) -> dict:
    """One round of ``clients`` concurrent clients; latencies in ms, throughput in sequences/s."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    threads = []
    for c in range(clients):
        batches = random_batches(count=requests + WARMUP_REQUESTS, batch=batch, length=length, seed=c)
        threads.append(threading.Thread(target=client_loop, args=(address, task, batches, latencies, errors)))
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; first: {errors[0]!r}")
    ms = np.array(latencies) * 1000
    # Warm-up requests overlap the timed ones of other clients, so count every sequence sent.
    sent = clients * (requests + WARMUP_REQUESTS) * batch
    return {"clients": clients, "requests": len(ms), "p50": np.percentile(ms, 50), "p99": np.percentile(ms, 99),
            "mean": ms.mean(), "throughput": sent / wall}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: ModelConfig() with random weights")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=20, help="timed requests per client")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--task", default="promoter")
    parser.add_argument("--max-workers", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or default_checkpoint(Path(scratch))
        process, address = start_server(checkpoint, batch=args.batch, max_workers=args.max_workers,
                                        # headroom: channels of the previous round may still count
                                        max_rpcs=2 * max(max(args.clients), args.max_workers))
        try:
            rows = [measure(address, clients=c, requests=args.requests, batch=args.batch, length=args.length,
                            task=args.task) for c in args.clients]
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"helixfed serve, Predict({args.task}), batches of {args.batch} x {args.length} bp; checkpoint: "
          f"{args.checkpoint or 'ModelConfig() defaults, random weights'}; server --max-workers {args.max_workers}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| clients | timed requests | p50 (ms) | p99 (ms) | mean (ms) | throughput (seq/s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['mean']:.1f} | "
              f"{r['throughput']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
