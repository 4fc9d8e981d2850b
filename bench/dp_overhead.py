"""DP cost through the real trainer: train_task_dp vs train_task_plain throughput, and how close a
training step comes to the machine's matmul FLOP/s.

The two trainers alternate in one process (plain, DP, plain, DP, ...), each call one local epoch over
the same generated promoter windows, so a noisy shared machine slows both alike: the ratio is the
result. Each DP call pays what a federated round pays: Opacus wrapping, Poisson sampling,
per-sample gradients, clipping, noise, accounting.

Hardware efficiency: FLOPs of one forward+backward counted with torch.utils.flop_counter
(matmul-class ops: addmm, mm, bmm), times the trainer's samples/s, against the FLOP/s of a large
fp32 torch.mm timed on the same threads. Anchor (Opacus reference notes, this kind of machine):
Opacus hooks at 0.94x non-DP for d=128, 4 layers, L=200. Poisson sampling makes a DP call's
sample count random (expected ``records``); the throughput of both modes counts the expected samples.

    .venv/bin/python bench/dp_overhead.py [--records 96] [--batch 32] [--length 200] [--rounds 8]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from typing import NamedTuple

import torch
from opacus import PrivacyEngine
from torch.utils.flop_counter import FlopCounterMode

from client.trainer import train_task_dp, train_task_plain
from common.config import TrainingConfig
from common.data.dataset import GenomicDataset, collate
from common.model import GenomicTransformer, ModelConfig
from common.synthetic.generator import generate
from common.tasks import task_loss

CPU = torch.device("cpu")


def machine() -> str:
    """CPU model and core count (from /proc/cpuinfo where there is one), for the recorded results."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def make_dataset(records: int, length: int, seed: int = 0) -> GenomicDataset:
    data = generate(task="promoter", species="human", n=records, seed=seed, length=length)
    return GenomicDataset(data.records, task="promoter")


class Rate(NamedTuple):
    """One call's throughput: samples per wall-clock second and per second of this process' CPU time
    (the second is what another process competing for the cores cannot inflate)."""

    wall: float
    cpu: float


def timed_call(model: GenomicTransformer, dataset: GenomicDataset, training: TrainingConfig, dp: bool) -> Rate:
    """Throughput of one trainer call (one local epoch: ``len(dataset)`` samples expected)."""
    wall, cpu = time.perf_counter(), time.process_time()
    if dp:
        train_task_dp(model, dataset, training=training, noise_multiplier=1.0, max_grad_norm=1.0,
                      accountant="rdp", device=CPU)
    else:
        train_task_plain(model, dataset, training=training, device=CPU)
    samples = len(dataset) * training.local_epochs
    return Rate(samples / (time.perf_counter() - wall), samples / (time.process_time() - cpu))


def alternate(config: ModelConfig, dataset: GenomicDataset, training: TrainingConfig, rounds: int
              ) -> dict[bool, list[Rate]]:
    """Throughput per call for plain (False) and DP (True), alternated after one warm-up call each."""
    torch.manual_seed(0)
    initial = GenomicTransformer(config, tasks=("promoter",))
    models = {dp: copy.deepcopy(initial) for dp in (False, True)}
    for dp in (False, True):
        timed_call(models[dp], dataset, training, dp)
    rates: dict[bool, list[Rate]] = {False: [], True: []}
    for _ in range(rounds):
        for dp in (False, True):
            rates[dp].append(timed_call(models[dp], dataset, training, dp))
    return rates


def median(rates: list[Rate], clock: str) -> float:
    return statistics.median(getattr(r, clock) for r in rates)


def paired_ratio(rates: dict[bool, list[Rate]], clock: str) -> float:
    """Median over rounds of DP / non-DP measured side by side in that round."""
    return statistics.median(getattr(dp, clock) / getattr(plain, clock)
                             for plain, dp in zip(rates[False], rates[True], strict=True))


def step_flops(config: ModelConfig, dataset: GenomicDataset, batch: int, dp: bool) -> float:
    """FLOPs of one forward+backward of ``batch`` sequences (with Opacus' per-sample gradients if ``dp``)."""
    torch.manual_seed(0)
    model = GenomicTransformer(config, tasks=("promoter",)).train()
    tokens, labels = collate([dataset[i] for i in range(batch)])
    if dp:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens, labels), batch_size=batch)
        PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.AdamW(model.parameters()), data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False, wrap_model=False)
    counter = FlopCounterMode(display=False)
    with counter:
        task_loss("promoter", model(tokens, "promoter").logits, labels).backward()
    return float(counter.get_total_flops())


def matmul_flops_per_second(size: int, repeats: int) -> float:
    """Best-of FLOP/s of an fp32 ``size x size`` torch.mm (2·n³ FLOPs each), per CPU-second of this
    process, like the training throughput it is compared with."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.process_time()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.process_time() - start))
    return best


def throughput_table(rates: dict[bool, list[Rate]]) -> str:
    rows = ["| trainer | median samples/s (wall) | range | median samples per CPU-s | range | calls |",
            "|---|---|---|---|---|---|"]
    for name, dp in (("train_task_plain (non-DP)", False), ("train_task_dp (Opacus hooks, Poisson)", True)):
        walls, cpus = [r.wall for r in rates[dp]], [r.cpu for r in rates[dp]]
        rows.append(f"| {name} | {median(rates[dp], 'wall'):.1f} | {min(walls):.1f}-{max(walls):.1f} | "
                    f"{median(rates[dp], 'cpu'):.1f} | {min(cpus):.1f}-{max(cpus):.1f} | {len(walls)} |")
    return "\n".join(rows)


def ratio_lines(rates: dict[bool, list[Rate]]) -> str:
    lines = ["| ratio DP / non-DP | wall clock | CPU time |", "|---|---|---|"]
    lines.append("| of the medians | " + " | ".join(f"{median(rates[True], c) / median(rates[False], c):.3f}"
                                                  for c in ("wall", "cpu")) + " |")
    lines.append("| median of side-by-side pairs | " + " | ".join(f"{paired_ratio(rates, c):.3f}"
                                                              for c in ("wall", "cpu")) + " |")
    return "\n".join(lines)


def efficiency_table(rates: dict[bool, list[Rate]], flops: dict[bool, float], batch: int, peak: float) -> str:
    rows = ["| trainer | GFLOP per sample (fwd+bwd) | samples per CPU-s | achieved GFLOP per CPU-s | "
            "share of matmul |", "|---|---|---|---|---|"]
    entries = (("non-DP", flops[False], False), ("DP, counted incl. per-sample grads", flops[True], True),
               ("DP, model FLOPs only", flops[False], True))
    for name, step_flop, dp in entries:
        per_sample, rate = step_flop / batch, median(rates[dp], "cpu")
        rows.append(f"| {name} | {per_sample / 1e9:.3f} | {rate:.1f} | {per_sample * rate / 1e9:.2f} | "
                    f"{per_sample * rate / peak:.1%} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=96, help="sequences per local epoch")
    parser.add_argument("--batch", type=int, default=32, help="(expected) logical batch size")
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=8, help="alternations (each: one plain and one DP epoch)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = ModelConfig()
    training = TrainingConfig(batch_size=args.batch, max_physical_batch_size=64)
    dataset = make_dataset(args.records, args.length)
    rates = alternate(config, dataset, training, args.rounds)
    flops = {dp: step_flops(config, dataset, args.batch, dp) for dp in (False, True)}
    peak = matmul_flops_per_second(args.matmul_size, repeats=5)
    params = GenomicTransformer(config, tasks=("promoter",)).num_parameters()
    print(f"- machine: {machine()}; {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    print(f"- model: d_model={config.d_model} n_layers={config.n_layers} n_heads={config.n_heads} d_ff={config.d_ff} "
          f"({params:,} parameters); {args.records} promoter windows x {args.length} bp per call (one local "
          f"epoch), batch {args.batch}, AdamW lr {training.learning_rate:g}; DP sigma 1.0, clip 1.0; "
          f"{args.rounds} alternated calls per trainer\n")
    print(throughput_table(rates) + "\n")
    print(ratio_lines(rates) + "\n")
    print("Anchor: 0.94 for Opacus hooks, d=128, 4 layers, L=200 (2 threads, batch 64, fixed batches). CPU time "
          "is the robust column when other work shares the cores (wall-clock rates then swing with it).\n")
    print(f"Measured matmul: {peak / 1e9:.1f} GFLOP per CPU-s (fp32 torch.mm {args.matmul_size}², best of 5). "
          "FLOPs counted with torch.utils.flop_counter on one forward+backward (addmm, mm, bmm).\n")
    print(efficiency_table(rates, flops, args.batch, peak))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
