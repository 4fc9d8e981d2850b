"""Species weighting: species-balanced vs example-weighted vs uniform aggregation, per-species central
metrics, on a federation where one species holds most of the data.

    .venv/bin/python bench/species_weighting.py [--rounds 4] [--n-per-task 500] [--seeds 2] [--dp]

The federation: the demo model and training settings (configs/demo.yaml) on the two tasks every
species has (promoter, coding); three human institutions of size 2 and one mouse, one fruit-fly
and one yeast institution of size 0.5 (``size`` multiplies ``n_per_task``), so human holds 80% of
the examples. The three modes then give human's institutions together 80% (``examples``), 50%
(``uniform``: 3 of 6 institutions) and 25% (``species_balanced``: one species of four) of every
average. DP is off by default so the comparison shows the weighting alone, not DP noise
(``--dp``: every institution at epsilon 8). The same generated data serves every run; each mode
runs ``--seeds`` times, each seed from its own initial model and batch order.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from privacy_utility import (  # noqa: E402
    ROOT,
    federation_variant,
    fmt,
    headlines,
    load_average,
    load_base,
    run_federation,
    with_privacy,
    write_config,
)

from common.tasks import get_task  # noqa: E402

MODES = ("species_balanced", "examples", "uniform")
TASKS = ["promoter", "coding"]
PLOT = ROOT / "bench" / "plots" / "species_weighting.png"
MAJORITY = "human"


def skewed_institutions(*, majority_size: float, minority_size: float) -> list[dict]:
    """Three human institutions of ``majority_size``, one of each other species of ``minority_size``."""
    entries = [{"name": f"human-{c}", "species": MAJORITY, "size": majority_size} for c in "abc"]
    entries += [{"name": f"{s.replace('_', '-')}-lab", "species": s, "size": minority_size}
                for s in ("mouse", "fruit_fly", "yeast")]
    return [{**e, "tasks": TASKS} for e in entries]  # privacy: set per run by with_privacy


def mode_config(base: dict, mode: str, seed: int, work: Path, *, rounds: int, n_per_task: int, dp: bool) -> dict:
    """One run's config: ``seed`` moves the model's initial weights and the training batches'
    order (the data stays the same)."""
    config = dict(base, tasks=TASKS, institutions=skewed_institutions(majority_size=2.0, minority_size=0.5))
    config = federation_variant(config, name=f"species-{mode}-{seed}", out_dir=work / f"{mode}-seed{seed}",
                                data_dir=work / "data", rounds=rounds, n_per_task=n_per_task)
    config["seed"] = base.get("seed", 0) + seed
    config["training"] = {**config["training"], "seed": seed}
    config["aggregation"] = {"mode": mode}
    config["federation"].update(min_train_institutions=len(config["institutions"]),
                                min_available_institutions=len(config["institutions"]))
    return with_privacy(config, 8.0 if dp else float("inf"), rounds)


def majority_share(history: list) -> float | None:
    """The human institutions' summed weight in the last round's backbone average."""
    weights = history[-1].aggregation.get("<backbone>", {})
    return sum(w for name, w in weights.items() if name.startswith(MAJORITY)) if weights else None


def run_once(base: dict, mode: str, seed: int, work: Path, args: argparse.Namespace) -> dict:
    """{"scores": {"all" | species: {task: headline}}, "share": human's weight, "seconds": wall}."""
    config = mode_config(base, mode, seed, work, rounds=args.rounds, n_per_task=args.n_per_task, dp=args.dp)
    history, seconds = run_federation(write_config(config, work / f"{mode}-seed{seed}.yaml"), timeout=args.timeout)
    central = history[-1].central
    species = sorted({s for m in central.values() for s in m.get("species", {})})
    print(f"{mode} seed {seed}: {seconds:.0f} s", file=sys.stderr)
    return {"scores": {"all": headlines(central), **{s: headlines(central, s) for s in species}},
            "share": majority_share(history), "seconds": seconds}


def run_modes(base: dict, work: Path, args: argparse.Namespace) -> dict[str, list[dict]]:
    """mode -> one result per seed (seeds outermost, so a drifting machine load hits every mode alike)."""
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for seed in range(args.seeds):
        for mode in MODES:
            results[mode].append(run_once(base, mode, seed, work, args))
    return results


def values(results: dict, mode: str, species: str, task: str) -> list[float]:
    return [v for run in results[mode] if (v := run["scores"].get(species, {}).get(task)) is not None]


def species_of(results: dict) -> list[str]:
    names = {s for runs in results.values() for run in runs for s in run["scores"] if s != "all"}
    return ["all", *sorted(names, key=lambda s: (s != MAJORITY, s))]


def cell(scores: list[float]) -> str:
    """Mean over seeds, with the range when there are several."""
    if not scores:
        return "–"
    if len(scores) == 1:
        return f"{scores[0]:.3f}"
    return f"{np.mean(scores):.3f} [{min(scores):.2f}, {max(scores):.2f}]"


def table(results: dict) -> list[str]:
    lines = ["| task | species | metric | " + " | ".join(MODES) + " | best (mean) |",
             "|" + "---|" * (len(MODES) + 4)]
    for task in TASKS:
        for species in species_of(results):
            scores = [values(results, m, species, task) for m in MODES]
            means = [float(np.mean(v)) if v else None for v in scores]
            lines.append(f"| {task} | {species} | {get_task(task).headline_metric} | "
                         + " | ".join(cell(v) for v in scores) + f" | {best_modes(means)} |")
    return lines


def best_modes(means: list[float | None]) -> str:
    """The mode(s) with the highest mean; "tie" when every mode scores the same."""
    known = [round(v, 6) for v in means if v is not None]
    if not known or len(set(known)) == 1:
        return "tie"
    top = max(known)
    return ", ".join(m for v, m in zip(means, MODES, strict=True) if v is not None and round(v, 6) == top)


def minority_means(results: dict) -> dict[str, float]:
    """Per mode, the mean headline metric over the minority species, both tasks and every seed."""
    minority = [s for s in species_of(results) if s not in ("all", MAJORITY)]
    return {m: float(np.mean([v for s in minority for t in TASKS for v in values(results, m, s, t)]))
            for m in MODES}


def plot(results: dict, path: Path = PLOT) -> None:
    """Bars: the mean over seeds; whiskers: the range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    species = species_of(results)
    fig, axes = plt.subplots(1, len(TASKS), figsize=(11, 4), sharey=True)
    width = 0.8 / len(MODES)
    for ax, task in zip(axes, TASKS, strict=True):
        for i, mode in enumerate(MODES):
            scores = [values(results, mode, s, task) or [0.0] for s in species]
            means = np.array([np.mean(v) for v in scores])
            spread = np.array([[m - min(v), max(v) - m] for m, v in zip(means, scores, strict=True)]).T
            ax.bar(np.arange(len(species)) + (i - 1) * width, means, width, yerr=spread, capsize=2, label=mode)
        ax.set_xticks(np.arange(len(species)), species, rotation=20)
        ax.set_title(f"{task} ({get_task(task).headline_metric})")
    axes[0].set_ylabel("central headline metric")
    axes[0].legend(fontsize=8)
    fig.suptitle("aggregation mode vs per-species metrics (human holds 80% of the examples)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n-per-task", type=int, default=500, help="records per task at size 1")
    parser.add_argument("--seeds", type=int, default=2, help="runs per mode, each from its own initial model")
    parser.add_argument("--dp", action="store_true", help="DP at epsilon 8 for every institution (default: off)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per federation, seconds")
    parser.add_argument("--work", type=Path, default=None, help="keep configs and runs here (default: a temp dir)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started, load_before = time.monotonic(), load_average()
    with tempfile.TemporaryDirectory(prefix="helixfed-species-") as tmp:
        results = run_modes(load_base(), (args.work or Path(tmp)).resolve(), args)
    plot(results)
    n_major, n_minor = 2 * args.n_per_task, args.n_per_task // 2
    print(f"# Species weighting ({args.rounds} rounds, demo model and training, DP "
          f"{'on, ε = 8' if args.dp else 'off'}, {args.seeds} seed(s) per mode)\n")
    print(f"Institutions: human-a/b/c with {n_major} records per task each, mouse, fruit fly and yeast with "
          f"{n_minor} each (80/10/10 train/val/test); tasks promoter and coding; central set per species.\n")
    print("\n".join(table(results)))
    print("\nCells: the final round's central metric, mean over seeds [min, max]. A seed sets the initial model and "
          "the batch order; the data is the same for every run. Without DP a run is reproducible up to the order "
          "in which replies reach the server.\n")
    print("| mode | human's share of the backbone average | minority species mean | wall s (mean) |\n|---|---|---|---|")
    means = minority_means(results)
    for mode in MODES:
        runs = results[mode]
        print(f"| {mode} | {fmt(runs[0]['share'])} | {means[mode]:.3f} | "
              f"{np.mean([r['seconds'] for r in runs]):.0f} |")
    print(f"\nplot: {PLOT.relative_to(ROOT)}; load average (1/5/15 min) before {load_before}, after {load_average()}; "
          f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
