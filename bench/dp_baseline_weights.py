"""Is the DP k-mer baseline held back by the same clipping bias? One institution's DP k-mer logistic
regression (common/analysis/dp_baselines.py, unchanged settings) trained with and without per-class
weights after clipping (client/trainer.py's optimizer, as ``training.weights_after_clipping`` uses it).

    .venv/bin/python bench/dp_baseline_weights.py --data /tmp/real_sets/pum2 --task enhancer \\
        --weights 0.5 1.0 [--epsilons 8 3] [--repeats 2] [--max-train 15000] [--institutions 3]

The training split is shuffled and dealt as bench/dp_recipe.py deals it; the first institution's share
trains. Prints MCC, AUROC, the fraction of test windows called positive and of records clipped.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
from pathlib import Path

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.trainer import _ClippingOptimizer  # noqa: E402
from common.analysis import dp_baselines  # noqa: E402
from common.data.dataset import GenomicDataset  # noqa: E402
from common.data.readers import load_dataset  # noqa: E402
from common.metrics import task_metrics  # noqa: E402
from common.tasks import get_task, task_loss  # noqa: E402


def fit(site: GenomicDataset, test: GenomicDataset, settings: dp_baselines.DPSettings,
        weights: tuple[float, ...]) -> dict[str, float]:
    """train_dp_baseline's loop with the optimizer that weights each record's clipped gradient."""
    task = site.task.name
    x, y = dp_baselines._tensors(site, settings.k)
    model = dp_baselines._model(site, x.shape[-1])
    sigma = dp_baselines.noise_multiplier_for(settings, records=len(site))
    loader = DataLoader(TensorDataset(x, y), batch_size=settings.batch_size,
                        generator=torch.Generator().manual_seed(secrets.randbits(63)))
    engine = PrivacyEngine(accountant="rdp")
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=0.9)
    model, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                   noise_multiplier=sigma, max_grad_norm=settings.max_grad_norm,
                                                   poisson_sampling=True)
    optimizer.__class__ = _ClippingOptimizer
    optimizer.automatic, optimizer.norm_log = False, []
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / (settings.epochs * len(loader))))
    class_weights = torch.tensor(weights)
    for _ in range(settings.epochs):
        for features, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            optimizer.record_weights = class_weights[labels]
            logits = model(features)
            loss = task_loss(task, logits, labels) if len(labels) else logits.sum() * 0.0
            loss.backward()
            optimizer.step()
            schedule.step()
    prob = dp_baselines.predict_dp_baseline(model, test, k=settings.k)
    metrics = task_metrics(get_task(task), test.label_array(), prob)
    norms = torch.cat(optimizer.norm_log)
    return {"mcc": metrics["mcc"], "auroc": metrics["auroc"], "called positive": float((prob[:, 1] > 0.5).mean()),
            "clipped": float((norms > settings.max_grad_norm).float().mean()),
            "epsilon": float(engine.get_epsilon(settings.delta))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--weights", type=float, nargs="+", required=True, help="one weight in (0, 1] per class")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=15000)
    parser.add_argument("--institutions", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = load_dataset(args.data / args.task, task=args.task, split="train", max_len=256)
    test = load_dataset(args.data / args.task, task=args.task, split="test", max_len=256)
    records = [train.record(i) for i in range(len(train))][: args.max_train]
    random.Random(0).shuffle(records)  # as bench/dp_recipe.py's deal()
    site = GenomicDataset(records[0::args.institutions], task=args.task, max_len=256)
    print("| ε | weights after clipping | run | MCC | AUROC | called positive | records clipped |\n|---|---|---|---|---|---|---|")
    for epsilon in args.epsilons:
        for weights in (tuple(1.0 for _ in args.weights), tuple(args.weights)):
            for run in range(1, args.repeats + 1):
                r = fit(site, test, dp_baselines.DPSettings(epsilon=epsilon), weights)
                print(f"| {r['epsilon']:.2f} | {list(weights)} | {run} | {r['mcc']:.3f} | {r['auroc']:.3f} | "
                      f"{r['called positive']:.3f} | {r['clipped']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
