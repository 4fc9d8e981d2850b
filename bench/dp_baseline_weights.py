"""Is the DP k-mer baseline held back by the same clipping bias? One institution's DP k-mer logistic
regression (common/analysis/dp_baselines.py, its fixed settings) trained with and without per-class
weights after clipping (``DPSettings.weights_after_clipping``, as ``training.weights_after_clipping``).

    .venv/bin/python bench/dp_baseline_weights.py --data /tmp/real_sets/pum2 --task enhancer \\
        --weights 0.5 1.0 [--epsilons 8 3] [--repeats 2] [--max-train 15000] [--institutions 3]

The training split is capped and dealt as bench/dp_recipe.py deals it; the first institution's share
trains. Prints MCC, AUROC and the fraction of test windows called positive (argmax).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.analysis.dp_baselines import DPSettings, predict_dp_baseline, train_dp_baseline  # noqa: E402
from common.data.dataset import GenomicDataset  # noqa: E402
from common.data.readers import load_dataset  # noqa: E402
from common.metrics import task_metrics  # noqa: E402


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
    print("| ε | weights after clipping | run | MCC | AUROC | called positive |\n|---|---|---|---|---|---|")
    for epsilon in args.epsilons:
        for weights in (None, tuple(args.weights)):
            for run in range(1, args.repeats + 1):
                settings = DPSettings(epsilon=epsilon, weights_after_clipping=weights)
                model, spent = train_dp_baseline(site, settings)
                prob = predict_dp_baseline(model, test, k=settings.k)
                metrics = task_metrics(site.task, test.label_array(), prob)
                print(f"| {spent:.2f} | {list(weights) if weights else 'none'} | {run} | {metrics['mcc']:.3f} | "
                      f"{metrics['auroc']:.3f} | {float((prob.argmax(axis=1) == 1).mean()):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
