"""Privacy-utility: the central headline metric of every task for federated DP training at several
budgets, beside centralized non-DP training of the same model on the pooled data, the classic
k-mer and PWM logistic regressions and the data generator's oracle.

    .venv/bin/python bench/privacy_utility.py [--rounds 4] [--n-per-task 1000] [--epsilons 1 3 8 inf]

The federation is configs/demo.yaml (four institutions of four species, the demo model, the demo
training settings), shrunk so that the four federations fit the `make bench` budget: ``--rounds``
rounds instead of 6 and ``--n-per-task`` generated records per institution and task instead of 2,000.
For each epsilon every institution gets that budget (delta 1e-5, planned over the run's rounds, its
own accountant as in the demo); ``inf`` turns DP off (``privacy.enabled: false``). Centralized
training runs ``rounds x local_epochs`` epochs over the pooled training splits of all institutions
with the same model, initialisation, batch size and optimizer, one task after the other each
"round" as an institution does. Baselines are fitted on the same pooled training data. Everything
is scored on the generated central evaluation set (every species of the task).

The federation helpers here (variant configs, headline metrics) are shared with
bench/species_weighting.py and bench/scale.py.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.data.dataset import GenomicDataset  # noqa: E402
from common.tasks import get_task  # noqa: E402

DEMO = ROOT / "configs" / "demo.yaml"
PLOT = ROOT / "bench" / "plots" / "privacy_utility.png"
TARGET_GAP = 0.03  # "within 3 points" of centralized non-DP, on the headline metric's 0..1 scale
CHANCE_MARGIN = 0.05  # centralized less than 5 points above chance: it did not learn the task


# ---------------------------------------------------------------- federation variants (shared)


def load_base(path: Path = DEMO) -> dict:
    return yaml.safe_load(path.read_text())


def federation_variant(base: dict, *, name: str, out_dir: Path, data_dir: Path, rounds: int,
                       n_per_task: int | None = None, central_n: int | None = None) -> dict:
    """A copy of a federation config with absolute output and data directories (the data is shared
    by every variant), ``rounds`` rounds and the report's own baselines off (scored here instead)."""
    config = copy.deepcopy(base)
    config.update(name=name, output_dir=str(out_dir), data_dir=str(data_dir))
    config["federation"]["rounds"] = rounds
    config.setdefault("central_evaluation", {})["baselines"] = False
    if n_per_task is not None:
        config["data"]["n_per_task"] = n_per_task
    if central_n is not None:
        config["data"]["central_n"] = central_n
    return config


def with_privacy(config: dict, epsilon: float, rounds: int) -> dict:
    """Every institution's budget set to ``epsilon`` over ``rounds`` rounds; ``inf``: DP off."""
    config = copy.deepcopy(config)
    for institution in config["institutions"]:
        old = institution.get("privacy", {})
        if math.isinf(epsilon):
            institution["privacy"] = {"enabled": False}
        else:
            institution["privacy"] = {"epsilon": epsilon, "delta": old.get("delta", 1e-5),
                                      "max_grad_norm": old.get("max_grad_norm", 1.0), "planned_rounds": rounds,
                                      "accountant": old.get("accountant", "rdp")}
    return config


def write_config(config: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_federation(config_file: Path, *, timeout: float = 1800.0) -> tuple[list[dict], float]:
    """A whole simulated federation through ``server.ops.simulate.simulate``: (history, wall seconds)."""
    from server.ops.simulate import simulate

    started = time.monotonic()
    history = simulate(config_file, fresh=True, timeout=timeout)
    return history, time.monotonic() - started


def headlines(central: dict, species: str | None = None) -> dict[str, float | None]:
    """task -> its headline metric, from a ``central`` entry of metrics.jsonl (or one species')."""
    out = {}
    for task, metrics in central.items():
        if species is not None:
            metrics = metrics.get("species", {}).get(species, {})
        out[task] = metrics.get(get_task(task).headline_metric)
    return out


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


# ---------------------------------------------------------------- centralized training and baselines


def pooled(datasets: list[GenomicDataset], *, max_len: int) -> GenomicDataset:
    """One dataset holding every record of ``datasets`` (same task), species kept per record."""
    task = datasets[0].task
    records = [d.record(i) for d in datasets for i in range(len(d))]
    return GenomicDataset(records, task=task.name, source="pooled", max_len=max_len)


def pooled_training_data(config) -> dict[str, GenomicDataset]:
    """Every task's training splits of every institution, pooled (what centralizing would give)."""
    from common.data.readers import load_dataset

    parts: dict[str, list[GenomicDataset]] = {}
    for institution in config.institutions:
        for task in institution.tasks:
            parts.setdefault(task, []).append(load_dataset(
                Path(config.data_dir) / institution.name / task, task=task, split="train",
                species=institution.species, max_len=config.model.max_len))
    return {task: pooled(sets, max_len=config.model.max_len) for task, sets in parts.items()}


def central_sets(config) -> dict[str, GenomicDataset]:
    from common.data.readers import load_dataset

    directory = Path(config.central_evaluation.data_dir)
    return {task: load_dataset(directory / task, task=task, split="test", max_len=config.model.max_len)
            for task in config.tasks if (directory / task).is_dir()}


def train_centralized(config, train: dict[str, GenomicDataset], central: dict[str, GenomicDataset],
                      rounds: int) -> dict[str, float]:
    """Non-DP training on the pooled data, ``rounds`` passes of ``local_epochs`` over every task in
    the order an institution trains them, from the federation's own initial model."""
    import torch

    from client.trainer import seed_everything, train_round
    from common.evaluation import evaluate
    from common.model import GenomicTransformer

    # One intra-op thread, as each simulated institution has: on this shared 2-core machine two
    # threads ran 2.3x slower than one (measured), and the comparison is about quality, not speed.
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)  # the same initial weights as the federation's round 0
    model = GenomicTransformer(config.model, tasks=config.tasks)
    for r in range(1, rounds + 1):
        seed_everything(config.training.seed + 1009 * r)
        train_round(model, train, training=config.training, dp=False, noise_multiplier=0.0, max_grad_norm=1.0,
                    accountant="rdp", device=torch.device("cpu"))
    return {task: evaluate(model, data, batch_size=128)[get_task(task).headline_metric]
            for task, data in central.items()}


def classic_baselines(train: dict[str, GenomicDataset], central: dict[str, GenomicDataset],
                      ) -> dict[str, dict[str, float | None]]:
    """method -> task -> headline metric of the k-mer and PWM logistic regressions."""
    from common.analysis.baselines import METHODS, applicable_methods, run_baseline

    table: dict[str, dict[str, float | None]] = {m: {} for m in METHODS}
    for task, data in central.items():
        for method in METHODS:
            if method in applicable_methods(task):
                metrics = run_baseline(train[task], data, task=task, method=method)
                table[method][task] = metrics[get_task(task).headline_metric]
            else:
                table[method][task] = None
    return table


def oracle(data_dir: Path, central: dict[str, GenomicDataset]) -> dict[str, float | None]:
    """The generator's oracle on the central set. Sequence tasks: MCC of the planted class
    (oracle.tsv, P(label = 1) per record) against the noisy labels, the best any model can expect.
    Splice: the manifest's site-window PWM PR-AUC (mean of donor and acceptor, then over species),
    a MaxEntScan-like reference, not a ceiling."""
    from common.synthetic.generator import matthews

    manifest = yaml.safe_load((data_dir / "manifest.yaml").read_text())
    out: dict[str, float | None] = {}
    for task, data in central.items():
        if get_task(task).per_position:
            per_species = manifest["central"][task]["oracle"].values()
            out[task] = float(np.mean([np.mean([m["pwm_pr_auc_donor"], m["pwm_pr_auc_acceptor"]])
                                       for m in per_species]))
            continue
        rows = (data_dir / "central" / task / "oracle.tsv").read_text().splitlines()[1:]
        probability = dict(line.split("\t") for line in rows)
        predicted = np.array([float(probability[i]) > 0.5 for i in data.ids], dtype=int)
        out[task] = matthews(data.label_array(), predicted)
    return out


# ---------------------------------------------------------------- the benchmark


def budget_label(epsilon: float) -> str:
    return "∞" if math.isinf(epsilon) else f"{epsilon:g}"


def variant_name(epsilon: float) -> str:
    return "eps-inf" if math.isinf(epsilon) else f"eps-{epsilon:g}"


def run_budgets(base: dict, work: Path, *, epsilons: list[float], rounds: int, n_per_task: int,
                timeout: float) -> dict[str, dict]:
    """One federation per budget; label -> {"central": headlines, "epsilon": max spent, "seconds": s}."""
    results = {}
    for epsilon in epsilons:
        label, name = budget_label(epsilon), variant_name(epsilon)
        config = with_privacy(federation_variant(base, name=name, out_dir=work / name, data_dir=work / "data",
                                                 rounds=rounds, n_per_task=n_per_task), epsilon, rounds)
        history, seconds = run_federation(write_config(config, work / f"{name}.yaml"), timeout=timeout)
        spent = [v for v in history[-1].epsilon.values() if v is not None]
        results[label] = {"central": headlines(history[-1].central), "seconds": seconds,
                          "epsilon": max(spent) if spent else None,
                          "round_seconds": float(np.mean([h.wall_seconds for h in history[1:]]))}
        print(f"federation ε={label}: {seconds:.0f} s", file=sys.stderr)
    return results


@dataclass
class Outcome:
    """Everything the report shows: per task, the headline metric of each contender."""

    federations: dict[str, dict]  # budget label -> {"central": {task: value}, "epsilon", "seconds", ...}
    centralized: dict[str, float]
    baselines: dict[str, dict[str, float | None]]  # method -> task -> value
    oracle: dict[str, float | None]
    chance: dict[str, float]
    seconds: dict[str, float]  # "centralized", "baselines"
    sizes: dict[str, str]  # "train", "central": "task n, task n, ..."

    @property
    def tasks(self) -> list[str]:
        return list(self.centralized)


def chance_level(dataset: GenomicDataset) -> float:
    """The headline metric of a predictor that knows nothing: MCC 0; for splice, PR-AUC equal to
    the sites' prevalence (mean of donor and acceptor)."""
    if not dataset.task.per_position:
        return 0.0
    labels = dataset.label_array()
    return float(np.mean([(labels == 1).mean(), (labels == 2).mean()]))


def results_table(o: Outcome) -> list[str]:
    header = ["task", "metric", *(f"fed ε={k}" for k in o.federations), "central non-DP", "k-mer LR", "PWM LR",
              "oracle", "chance"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in o.tasks:
        federated = [fmt(f["central"].get(task)) for f in o.federations.values()]
        references = [o.centralized.get(task), o.baselines["kmer"].get(task), o.baselines["pwm"].get(task),
                      o.oracle.get(task), o.chance[task]]
        cells = [task, get_task(task).headline_metric, *federated, *(fmt(v) for v in references)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def target_lines(o: Outcome, label: str = "8") -> list[str]:
    """Is federated DP at epsilon = ``label`` within 3 points of centralized and above both
    baselines on each task? Gaps in points (headline metric x 100). Where centralized training
    itself stayed at chance, "within 3 points" says nothing, and the table says so."""
    if label not in o.federations:
        return [f"target not checked: no federation at ε={label}"]
    lines = [f"Target at ε={label}: within {TARGET_GAP * 100:.0f} points of centralized non-DP and above the "
             "classic baselines on every task.", "",
             "| task | fed − central (points) | within 3? | fed − best baseline (points) | above? |",
             "|---|---|---|---|---|"]
    for task in o.tasks:
        fed, central = o.federations[label]["central"].get(task), o.centralized.get(task)
        best = max((v for v in (o.baselines["kmer"].get(task), o.baselines["pwm"].get(task)) if v is not None),
                   default=None)
        gap = None if fed is None or central is None else fed - central
        lead = None if fed is None or best is None else fed - best
        within = _yes(gap is not None and gap >= -TARGET_GAP)
        if central is not None and central - o.chance[task] < CHANCE_MARGIN:
            within += " (vacuous: centralized at chance)"
        above = _yes(lead is not None and lead > 0)
        lines.append(f"| {task} | {_points(gap)} | {within} | {_points(lead)} | {above} |")
    return lines


def _points(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def plot(o: Outcome, path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {**{f"fed ε={k}": f["central"] for k, f in o.federations.items()}, "central non-DP": o.centralized,
              "k-mer LR": o.baselines["kmer"], "PWM LR": o.baselines["pwm"]}
    width, tasks = 0.8 / len(series), o.tasks
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, (name, values) in enumerate(series.items()):
        heights = [values.get(t) if values.get(t) is not None else 0.0 for t in tasks]
        ax.bar(np.arange(len(tasks)) + (i - len(series) / 2 + 0.5) * width, heights, width, label=name)
    for j, task in enumerate(tasks):  # the oracle as a line across each task's group
        if o.oracle.get(task) is not None:
            ax.hlines(o.oracle[task], j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                      label="oracle" if j == 0 else None)
    ax.set_xticks(np.arange(len(tasks)), [f"{t}\n({get_task(t).headline_metric})" for t in tasks])
    ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
    ax.set_ylabel("central headline metric")
    ax.set_title("privacy-utility: federated DP vs centralized vs classic baselines")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(o: Outcome, args: argparse.Namespace, config) -> None:
    epochs = config.training.local_epochs
    print(f"# Privacy-utility (configs/demo.yaml shrunk: {args.rounds} rounds x {epochs:g} local epochs, "
          f"{args.n_per_task} records per institution and task, central set {config.data.central_n} per species "
          "and task)\n")
    print(f"Pooled training records per task: {o.sizes['train']}; central evaluation records: {o.sizes['central']}.\n")
    print("\n".join(results_table(o)))
    print("\nFederated runs: the final round's central metrics (one run each; DP noise comes from OS entropy, "
          "so a rerun differs). Oracle: sequence tasks, MCC of the generator's planted class against the noisy "
          "labels (a ceiling); splice, the site-window PWM PR-AUC (a reference a model can beat, not a ceiling). "
          "Chance: the metric of a predictor that knows nothing.\n")
    print("\n".join(target_lines(o)))
    print("\n| run | ε spent (max institution) | wall s | mean s per round |\n|---|---|---|---|")
    for label, f in o.federations.items():
        print(f"| fed ε={label} | {fmt(f['epsilon'])} | {f['seconds']:.0f} | {f['round_seconds']:.1f} |")
    print(f"| centralized non-DP ({args.rounds * epochs:g} epochs, 1 thread) | – | "
          f"{o.seconds['centralized']:.0f} | – |")
    print(f"| k-mer + PWM baselines | – | {o.seconds['baselines']:.0f} | – |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="federated rounds (demo: 6)")
    parser.add_argument("--n-per-task", type=int, default=1000,
                        help="records per institution and task (demo: 2000)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument("--timeout", type=float, default=1800.0, help="per federation, seconds")
    parser.add_argument("--work", type=Path, default=None, help="keep configs and runs here (default: a temp dir)")
    return parser.parse_args()


def references(config, rounds: int) -> dict:
    """Centralized training, baselines, oracle and chance on the federation's data (Outcome fields)."""
    train, central = pooled_training_data(config), central_sets(config)
    clock = time.monotonic()
    centralized = train_centralized(config, train, central, rounds)
    seconds = {"centralized": time.monotonic() - clock}
    clock = time.monotonic()
    baselines = classic_baselines(train, central)
    seconds["baselines"] = time.monotonic() - clock
    sizes = {name: ", ".join(f"{t} {len(d)}" for t, d in sets.items())
             for name, sets in (("train", train), ("central", central))}
    return {"centralized": centralized, "baselines": baselines, "oracle": oracle(Path(config.data_dir), central),
            "chance": {t: chance_level(d) for t, d in central.items()}, "seconds": seconds, "sizes": sizes}


def main() -> None:
    from common.config import load_federation

    args = parse_args()
    started, load_before = time.monotonic(), load_average()
    with tempfile.TemporaryDirectory(prefix="helixfed-privacy-utility-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        federations = run_budgets(load_base(), work, epsilons=args.epsilons, rounds=args.rounds,
                                  n_per_task=args.n_per_task, timeout=args.timeout)
        config = load_federation(work / f"{variant_name(args.epsilons[0])}.yaml")  # all share data and model
        outcome = Outcome(federations=federations, **references(config, args.rounds))
    plot(outcome)
    report(outcome, args, config)
    print(f"\nplot: {PLOT.relative_to(ROOT)}; load average (1/5/15 min) before {load_before}, "
          f"after {load_average()}; total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
