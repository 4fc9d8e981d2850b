"""Samples/s of one training step of the default model: non-DP vs Opacus DP-SGD (hooks).

The two modes alternate in one process (ABAB...), so a noisy shared machine slows both alike;
the ratio is the result, absolute numbers are machine-bound.

    .venv/bin/python bench/model_step.py [--batch 32] [--length 200] [--rounds 4] [--steps 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from opacus import PrivacyEngine

from common.model import GenomicTransformer, ModelConfig
from common.tasks import task_loss
from common.tokenizer import PAD_ID


def make_batch(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 6, (batch, length), generator=g)
    for row in range(batch):  # 0-20 trailing padding, as real batches of mixed lengths have
        pad = int(torch.randint(0, 21, (1,), generator=g))
        if pad:
            tokens[row, length - pad:] = PAD_ID
    return tokens, torch.randint(0, 2, (batch,), generator=g)


def build(dp: bool, config: ModelConfig, batch):
    torch.manual_seed(0)
    model = GenomicTransformer(config, tasks=("promoter",)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if dp:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*batch), batch_size=len(batch[0]))
        _, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False, wrap_model=False)
    return model, optimizer


def timed_steps(model, optimizer, batch, steps: int) -> list[float]:
    tokens, labels = batch
    rates = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        task_loss("promoter", model(tokens, "promoter").logits, labels).backward()
        optimizer.step()
        rates.append(len(tokens) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig()
    batch = make_batch(args.batch, args.length)
    runs = {False: build(False, config, batch), True: build(True, config, batch)}
    for dp in (False, True):  # warm-up
        timed_steps(*runs[dp], batch, 1)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for dp in (False, True):
            rates[dp] += timed_steps(*runs[dp], batch, args.steps)
    plain, private = statistics.median(rates[False]), statistics.median(rates[True])
    params = runs[False][0].num_parameters()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"model: d_model={config.d_model} n_layers={config.n_layers} n_heads={config.n_heads} "
          f"d_ff={config.d_ff} ({params:,} parameters); batch {args.batch} x {args.length} bp")
    print("| mode | median samples/s | min | max | steps |")
    print("|---|---|---|---|---|")
    for name, dp in (("non-DP (AdamW)", False), ("Opacus DP-SGD hooks (AdamW)", True)):
        r = rates[dp]
        print(f"| {name} | {statistics.median(r):.1f} | {min(r):.1f} | {max(r):.1f} | {len(r)} |")
    print(f"ratio DP / non-DP: {private / plain:.3f}")


if __name__ == "__main__":
    main()
