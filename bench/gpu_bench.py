"""GPU: DP vs non-DP training throughput and peak memory through the real trainer, fp32 and bf16.

For each model (the default d=128, 4 layers at L=200, and a larger d=256, 6 layers at L=512) and
each precision, train_task_plain and train_task_dp alternate in one process (plain, DP, plain, DP,
...), each call one local epoch over the same generated promoter windows, so the ratio is measured
under the same conditions. Peak memory is torch.cuda.max_memory_allocated over one call. A
combination that fails (e.g. out of memory) is recorded as failed and the rest still run; a time
budget skips what would not fit. Run by bench/gpu.sh; ``--cpu-smoke`` checks the script on a CPU
with a tiny model and a couple of steps (its numbers mean nothing).

    python bench/gpu_bench.py --out gpu_results.md [--rounds 4] [--budget-s 360] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from client.trainer import train_task_dp, train_task_plain
from common.config import TrainingConfig
from common.data.dataset import GenomicDataset
from common.model import GenomicTransformer, ModelConfig
from common.synthetic.generator import generate


@dataclass(frozen=True)
class Case:
    name: str
    model: ModelConfig
    length: int
    batch: int
    records: int


GPU_CASES = (
    Case("default d=128, 4 layers", ModelConfig(), length=200, batch=64, records=512),
    Case("large d=256, 6 layers", ModelConfig(d_model=256, n_heads=8, n_layers=6, d_ff=1024, max_len=512),
         length=512, batch=64, records=256),
)
SMOKE_CASES = (Case("smoke d=32, 1 layer", ModelConfig(d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=256),
                    length=170, batch=8, records=16),)
PRECISIONS = ("fp32", "bf16")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(model, dataset: GenomicDataset, training: TrainingConfig, dp: bool,
               device: torch.device) -> tuple[float, float]:
    """``(samples/s, peak MiB)`` of one trainer call (one local epoch; peak is 0 on a CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    if dp:
        train_task_dp(model, dataset, training=training, noise_multiplier=1.0, max_grad_norm=1.0,
                      accountant="rdp", device=device)
    else:
        train_task_plain(model, dataset, training=training, device=device)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return len(dataset) / seconds, peak


def measure(case: Case, precision: str, device: torch.device, rounds: int) -> dict[bool, dict]:
    """Alternated plain/DP calls after one warm-up each: samples/s per call and the peak memory."""
    data = generate(task="promoter", species="human", n=case.records, seed=0, length=case.length).records
    dataset = GenomicDataset(data, task="promoter")
    training = TrainingConfig(batch_size=case.batch, max_physical_batch_size=case.batch, precision=precision,
                              max_len=case.length)
    torch.manual_seed(0)
    initial = GenomicTransformer(case.model, tasks=("promoter",)).to(device)
    models = {dp: copy.deepcopy(initial) for dp in (False, True)}
    results = {dp: {"rates": [], "peak": 0.0} for dp in (False, True)}
    for dp in (False, True):
        timed_call(models[dp], dataset, training, dp, device)
    for _ in range(rounds):
        for dp in (False, True):
            rate, peak = timed_call(models[dp], dataset, training, dp, device)
            results[dp]["rates"].append(rate)
            results[dp]["peak"] = max(results[dp]["peak"], peak)
    return results


def rows_for(case: Case, precision: str, results: dict[bool, dict] | str) -> list[str]:
    head = f"| {case.name} | {case.length} | {case.batch} | {precision} "
    if isinstance(results, str):
        return [head + f"| both | {results} | - | - | - |"]
    plain = statistics.median(results[False]["rates"])
    rows = []
    for dp in (False, True):
        rates = results[dp]["rates"]
        rows.append(head + f"| {'DP (Opacus hooks)' if dp else 'non-DP'} | {statistics.median(rates):.0f} | "
                    f"{min(rates):.0f}-{max(rates):.0f} | {statistics.median(rates) / plain:.3f} | "
                    f"{results[dp]['peak']:.0f} |")
    return rows


def header(device: torch.device, args: argparse.Namespace) -> list[str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return [f"# GPU benchmark: DP vs non-DP training ({'CPU SMOKE RUN: numbers mean nothing' if args.cpu_smoke else name})",
            "",
            f"- device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}; "
            f"TF32 matmul: {torch.backends.cuda.matmul.allow_tf32}",
            f"- command: python bench/gpu_bench.py --rounds {args.rounds}{' --cpu-smoke' if args.cpu_smoke else ''}; "
            "each call = one local epoch through client/trainer.py (DP: Poisson sampling, sigma 1.0, clip 1.0); "
            f"{args.rounds} alternated calls per mode after one warm-up; peak = torch.cuda.max_memory_allocated"
            + ("; bf16 autocast applies on CUDA only, so the smoke run's bf16 rows are fp32" if args.cpu_smoke else ""),
            "",
            "| model | L | batch | precision | mode | median samples/s | range | ratio to non-DP | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=360.0, help="skip combinations once this is spent")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, a couple of steps")
    args = parser.parse_args()
    if args.cpu_smoke:
        torch.set_num_threads(1)
        device, cases, args.rounds = torch.device("cpu"), SMOKE_CASES, 1
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible; use --cpu-smoke to check the script on a CPU")
    else:
        device, cases = torch.device("cuda"), GPU_CASES
    start, lines = time.perf_counter(), header(device, args)
    for case in cases:
        for precision in PRECISIONS:
            if time.perf_counter() - start > args.budget_s:
                lines += rows_for(case, precision, f"skipped: time budget {args.budget_s:.0f} s spent")
                continue
            try:
                results = measure(case, precision, device, args.rounds)
            except (RuntimeError, ValueError) as err:  # OOM is a RuntimeError; record it and go on
                traceback.print_exc()
                results = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            lines += rows_for(case, precision, results)
            print("\n".join(lines[-2:]), flush=True)
    lines += ["", f"total {time.perf_counter() - start:.0f} s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
