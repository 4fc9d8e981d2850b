"""From scratch vs pre-trained, and all vs heads vs LoRA, side by side at the same ε (issue 12.2).

The demo federation (configs/demo.yaml: four institutions, four species, ε ≤ 8, the recommended
recipe with its linear k-mer paths) trained once per variant through the real simulation engine, on
the same generated data. "pretrained" starts from ``helixfed pretrain`` on the generator's public
sequence (``data/public/<species>.fa``: drawn from the same genome models, disjoint from every
institution's records). Each row: every task's central headline metric after the last round, and the
variant-impact rank correlation (Spearman of the model's score with the generator's planted effect on
``data/variants.tsv``); the k-mer baselines (non-private and DP at the largest ε) come first.

    .venv/bin/python bench/finetuning_modes.py [--variants scratch/all pretrained/all pretrained/heads
        pretrained/lora] [--pretrain-steps 600] [--work DIR]

Prints a markdown report on stdout (``bench/run_all.py`` stores it in ``bench/results/``).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from privacy_utility import (  # noqa: E402
    fmt,
    headlines,
    load_average,
    load_base,
    run_federation,
    write_config,
)

from common.analysis.scoring import evaluate_variant_effects  # noqa: E402
from common.checkpoint import load_model  # noqa: E402
from common.config import load_federation  # noqa: E402
from common.data.readers import load_dataset  # noqa: E402
from common.protocol import MetricsLog  # noqa: E402
from common.synthetic.variants import VariantPair  # noqa: E402
from server.ops.simulate import ensure_data  # noqa: E402
from server.report import baselines  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
LORA_RANK = 8


def variant_config(base: dict, variant: str, *, work: Path, checkpoint: Path) -> Path:
    start, trainable = variant.split("/")
    config = {**base, "name": variant.replace("/", "-"), "output_dir": str(work / variant.replace("/", "-")),
              "data_dir": str(work / "data")}
    config["model"] = {**base["model"], **({"lora_rank": LORA_RANK} if trainable == "lora" else {})}
    config["training"] = {**base["training"], "trainable": trainable}
    config["central_evaluation"] = {**base.get("central_evaluation", {}), "baselines": False}
    if start == "pretrained":
        config["init_checkpoint"] = str(checkpoint)
    return write_config(config, work / f"{config['name']}.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+",
                        default=["scratch/all", "pretrained/all", "pretrained/heads", "pretrained/lora"])
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temp dir)")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="finetuning-") as tmp:
        work = args.work or Path(tmp)
        base = load_base(DEMO)
        data_config = write_config({**base, "data_dir": str(work / "data"), "output_dir": str(work / "data-run")},
                                   work / "data.yaml")
        federation = load_federation(data_config)
        ensure_data(federation)
        checkpoint = work / "pretrained" / "checkpoint"
        if any(v.startswith("pretrained") for v in args.variants) and not checkpoint.exists():
            subprocess.run([sys.executable, "-m", "common.cli", "pretrain", "--fasta",
                            *map(str, sorted((work / "data" / "public").glob("*.fa"))), "--config", str(DEMO),
                            "--out", str(work / "pretrained"), "--steps", str(args.pretrain_steps)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        central = {t: load_dataset(work / "data" / "central" / t, task=t, split="test",
                                   max_len=federation.model.max_len) for t in federation.tasks}
        kmer, dp_kmer = baselines(central), baselines(central, dp_epsilon=8.0)
        with open(work / "data" / "variants.tsv", newline="") as table:
            pairs = [VariantPair(**{**row, "position": int(row["position"]), "effect": float(row["effect"])})
                     for row in csv.DictReader(table, delimiter="\t")]
        max_len = federation.model.max_len  # the longer pairs (splice windows of 300 bases) do not fit the model
        pairs = [v for v in pairs if len(v.ref) <= max_len and len(v.alt) <= max_len]
        rows = []
        for variant in args.variants:
            config_file = variant_config(base, variant, work=work, checkpoint=checkpoint)
            out = load_federation(config_file).output_dir
            if args.work and (out / "final").is_dir():  # finished in an earlier run of this script: reuse it
                history, seconds = MetricsLog(out).read(), sum(line.wall_seconds for line in MetricsLog(out).read())
            else:
                history, seconds = run_federation(config_file)
            final = out / "final"
            model, _ = load_model(final)
            impact = evaluate_variant_effects(model, pairs=pairs)
            last = history[-1]
            spent = max(r.epsilon for r in last.institutions.values() if r.epsilon is not None)
            rows.append((variant, headlines(last.central), impact["spearman"], spent, seconds))
            print(f"{variant}: {rows[-1]}", file=sys.stderr, flush=True)
    tasks = list(federation.tasks)
    print("# From scratch vs pre-trained; all vs heads vs LoRA (bench/finetuning_modes.py)\n")
    print(f"The demo federation (`configs/demo.yaml`, {federation.federation.rounds} rounds, four institutions, "
          f"ε ≤ 8), one run per variant on the same generated data; pre-trained: `helixfed pretrain` "
          f"{args.pretrain_steps} steps on the generator's public sequence; LoRA rank {LORA_RANK} (+ LayerNorms and "
          f"heads). Central headline metric per task after the last round; variant impact: Spearman of the "
          f"model's score with the planted effect ({len(pairs)} pairs). Load average {load_average()}; "
          f"{time.monotonic() - started:.0f} s in all.\n")
    print("| model | " + " | ".join(tasks) + " | variant impact | ε spent | s |")
    print("|---|" + "---|" * (len(tasks) + 3))
    print("| k-mer baseline, no DP | " + " | ".join(fmt(kmer[t]["all"]) for t in tasks) + " | – | – | – |")
    print("| DP k-mer baseline, ε = 8 | " + " | ".join(fmt(dp_kmer[t]["all"]) for t in tasks) + " | – | 8 | – |")
    for variant, scores, impact, spent, seconds in rows:
        print(f"| federated, {variant} | " + " | ".join(fmt(scores.get(t)) for t in tasks) +
              f" | {fmt(impact)} | {spent:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
