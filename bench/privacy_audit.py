"""Privacy audit at ε ∈ {1, 3, 8} and without DP: canary exposure and membership inference.

Generates a small institution (human promoters), plants canaries in a copy of its training data
and trains the audit's tiny model from one init without DP and at each budget (client/privacy/canary_audit.py
says what is planted and measured). Prints a markdown table; the never-seen canaries in each model
are the control (what chance gives), the untrained model shows the secrets' scores before training.

Anchor (published work): without DP, DNA language models memorise planted 12-bp canaries (97%
recovered after 320 exposures). Target: with DP at ε <= 8, exposure indistinguishable from the
never-seen canaries.

    .venv/bin/python bench/privacy_audit.py [--records 600] [--canaries 20] [--repeats 8] [--epochs 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from client.privacy.canary_audit import AuditSettings, audit_institution, run_name
from common.config import InstitutionConfig, PrivacyConfig, TrainingConfig
from common.data.writers import write_split_tables
from common.synthetic.generator import generate

LENGTH = 170


def machine() -> str:
    """CPU model and core count (from /proc/cpuinfo where there is one), for the recorded results."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def make_institution(root: Path, *, records: int, seed: int) -> InstitutionConfig:
    """A human institution holding ``records`` promoter windows (80/10/10 train/val/test)."""
    data = generate(task="promoter", species="human", n=records, seed=seed, length=LENGTH, difficulty=0.25).records
    train_end, val_end = int(0.8 * records), int(0.9 * records)
    write_split_tables(root / "data" / "promoter", {"train": data[:train_end], "val": data[train_end:val_end],
                                                    "test": data[val_end:]})
    privacy = PrivacyConfig(epsilon=8.0, delta=1e-4, max_grad_norm=1.0, planned_rounds=1)
    return InstitutionConfig(name="bench-lab", species="human", tasks=("promoter",), data_dir=root / "data",
                             state_dir=root / "state", device="cpu", privacy=privacy)


def table(report: dict) -> str:
    rows = ["| model | ε (δ=1e-4) | σ | exposure mean | exposure max | ranked first | never-seen mean | "
            "never-seen max | p (planted > never-seen) | canary AUC | MIA AUC | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        planted, control = run["planted"], run["never_seen"]
        epsilon = "-" if run["epsilon"] is None else f"{run['epsilon']:.2f}"
        rows.append(f"| {run_name(run)} | {epsilon} | {run['noise_multiplier']:.3f} | "
                    f"{planted['exposure_mean']:.2f} | {planted['exposure_max']:.2f} | "
                    f"{planted['ranked_first']:.0%} | {control['exposure_mean']:.2f} | "
                    f"{control['exposure_max']:.2f} | {run['exposure_p_value']:.3f} | {run['canary_auc']:.3f} | "
                    f"{run['mia_auc']:.3f} | {run['train_seconds']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=600, help="promoter records generated (train 80%%)")
    parser.add_argument("--canaries", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=40.0)
    parser.add_argument("--candidates", type=int, default=255)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = AuditSettings(canaries=args.canaries, repeats=args.repeats, epochs=args.epochs,
                             candidates=args.candidates, epsilons=tuple(args.epsilons), seed=args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="helixfed-audit-") as work:
        config = make_institution(Path(work), records=args.records, seed=args.seed + 5)
        report = audit_institution(config=config, out_dir=Path(work) / "audit", settings=settings,
                                   training=TrainingConfig(), progress=lambda line: print(line, file=sys.stderr))
    print("\n".join(setup_lines(report, args)) + "\n")
    print(table(report) + "\n")
    print("\n".join(reading_lines(report)))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def setup_lines(report: dict, args: argparse.Namespace) -> list[str]:
    model, training = report["model"], report["training"]
    return [f"- machine: {machine()}; {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
            f"{time.strftime('%Y-%m-%d')}",
            f"- model: d_model={model['d_model']}, {model['n_layers']} layer(s), motif_kernel={model['motif_kernel']} "
            f"(client.privacy.canary_audit.AUDIT_MODEL); training: batch {training['batch_size']}, lr {training['learning_rate']:g}, "
            f"{training['optimizer']}, {args.epochs:g} epochs, clip {report['max_grad_norm']:g}, "
            f"{report['accountant']} accountant, σ planned so the epochs spend exactly ε",
            f"- data: {report['records']['train']} human promoter training records + {args.canaries} canaries x "
            f"{args.repeats} copies ({args.repeats * args.epochs:g} exposures of each secret), "
            f"{report['records']['held_out']} held out (MIA non-members); {args.canaries} never-seen canaries",
            f"- exposure among N = {args.candidates + 1} secrets: max {report['max_exposure']:.2f} bits, "
            f"chance {report['chance_exposure']:.2f}; AUCs: 0.5 = chance"]


def reading_lines(report: dict) -> list[str]:
    """One line per trained model: planted vs never-seen at the 5% level, and the anchor."""
    lines = []
    for run in report["runs"][1:]:
        verdict = ("distinguishable from" if run["exposure_p_value"] < 0.05 else "indistinguishable from")
        lines.append(f"- {run_name(run)}: planted canaries {verdict} never-seen ones at the 5% level "
                     f"(one-sided Mann-Whitney p = {run['exposure_p_value']:.3f}); "
                     f"{run['planted']['ranked_first']:.0%} ranked first")
    lines.append("- anchor: DNA language models without DP recover 97% of planted 12-bp canaries after 320 "
                 "exposures (a generative model reads the secret back; this classifier only ranks it)")
    return lines


if __name__ == "__main__":
    main()
