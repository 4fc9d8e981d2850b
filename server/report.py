"""The run's human-readable results: ``report.md`` and ``plots/*.png`` from ``metrics.jsonl``.

Two baseline columns, each 2-fold cross-validated on the server's own central evaluation set (the
server never sees institution data), per task, scored on all species and on each (one baseline fitted
on the pooled half, as the model is one model): the classic k-mer logistic regression
without privacy (the bar to clear), and the same features trained with DP-SGD at the largest budget
any institution reported (:mod:`common.analysis.dp_baselines`), what a site could fit alone under DP.
A row whose model is below a baseline is marked, so the report says where the transformer loses.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.analysis.baselines import fit_predict_baseline  # noqa: E402
from common.analysis.dp_baselines import DPSettings, predict_dp_baseline, train_dp_baseline  # noqa: E402
from common.config import FederationConfig  # noqa: E402
from common.data.dataset import GenomicDataset  # noqa: E402
from common.evaluation import Predictions, metrics_by_species  # noqa: E402
from common.metrics import task_metrics  # noqa: E402
from common.protocol import RoundMetrics, institution_summaries  # noqa: E402
from common.tasks import get_task  # noqa: E402

log = logging.getLogger(__name__)
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"


def _subset(dataset: GenomicDataset, rows: list[int]) -> GenomicDataset:
    records = [dataset.record(i) for i in rows]
    return GenomicDataset(records, task=dataset.task.name, source=dataset.source)


def _out_of_fold_probabilities(train: GenomicDataset, test: GenomicDataset, *, seed: int,
                               dp_epsilon: float | None) -> np.ndarray:
    if dp_epsilon is None:
        return fit_predict_baseline(train, test, task=train.task.name, method="kmer", seed=seed)
    settings = DPSettings(epsilon=dp_epsilon)
    model, _ = train_dp_baseline(train, settings)
    return predict_dp_baseline(model, test, k=settings.k)


def cross_validated_baseline(dataset: GenomicDataset, *, seed: int = 0,
                             dp_epsilon: float | None = None) -> dict[str, float] | None:
    """Headline metric of the k-mer baseline (trained with DP at ``dp_epsilon`` when given), mean over
    2 folds: ``{"all": …, <species>: …}``. Each fold's baseline is fitted on all species of its half
    and scored on the other half as a whole and per species, as the model is: the species rows hold
    the same baseline as the pooled row (one fitted on a single species' hundred-odd records would
    be a weaker bar). None if it cannot be fitted."""
    task = dataset.task
    order = np.random.default_rng(seed).permutation(len(dataset))
    folds = [order[: len(order) // 2].tolist(), order[len(order) // 2:].tolist()]
    scores: dict[str, list[float]] = {}
    for train_rows, test_rows in (folds, folds[::-1]):
        train, test = _subset(dataset, train_rows), _subset(dataset, test_rows)
        try:
            prob = _out_of_fold_probabilities(train, test, seed=seed, dp_epsilon=dp_epsilon)
        except ValueError as err:  # e.g. a fold with a single class
            log.warning("baseline for %s skipped: %s", task.name, err)
            return None
        labels = test.label_array()
        scores.setdefault("all", []).append(task_metrics(task, labels, prob)[task.headline_metric])
        lengths = np.asarray([t.numel() for t in test.labels])  # scored rows per record, as label_array() lays them out
        by_species = metrics_by_species(task.name, test, Predictions(prob, labels, lengths, None))
        for species, metrics in by_species.items():
            scores.setdefault(str(species), []).append(metrics[task.headline_metric])
    return {name: float(np.mean(values)) for name, values in scores.items()}


def baselines(central: dict[str, GenomicDataset], *, dp_epsilon: float | None = None,
              ) -> dict[str, dict[str, float | None]]:
    """task -> {"all": score, <species>: score} (see :func:`cross_validated_baseline`)."""
    return {task: cross_validated_baseline(dataset, dp_epsilon=dp_epsilon) or {"all": None}
            for task, dataset in central.items()}


def largest_budget(history: list[RoundMetrics]) -> float | None:
    """The largest ε budget any institution reported (None: no institution trained under DP)."""
    budgets = [r.budget for line in history for r in line.institutions.values()
               if r.budget is not None and math.isfinite(r.budget)]
    return max(budgets) if budgets else None


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def results_table(history: list[RoundMetrics], baseline: dict | None = None, dp_baseline: dict | None = None,
                  dp_epsilon: float | None = None) -> list[str]:
    """Markdown rows: task x species, headline metric at round 0 and at the last round, beside the
    baselines; the last round's value is marked "(below)" where a baseline beats it."""
    first, last = history[0].central, history[-1].central
    dp_title = f"DP k-mer (ε={dp_epsilon:g})" if dp_epsilon is not None else "DP k-mer"
    lines = ["| task | species | metric | round 0 | round " + str(history[-1].round) + f" | k-mer baseline | {dp_title} |",
             "|---|---|---|---|---|---|---|"]
    for task in last:
        metric = get_task(task).headline_metric
        rows = [("all", first.get(task, {}), last[task])]
        rows += [(s, first.get(task, {}).get("species", {}).get(s, {}), m)
                 for s, m in last[task].get("species", {}).items()]
        for species, before, after in rows:
            base = (baseline or {}).get(task, {}).get(species)
            dp_base = (dp_baseline or {}).get(task, {}).get(species)
            value = after.get(metric)
            below = value is not None and any(b is not None and value < b for b in (base, dp_base))
            lines.append(f"| {task} | {species} | {metric} | {_fmt(before.get(metric))} | "
                         f"{_fmt(value)}{' (below)' if below else ''} | {_fmt(base)} | {_fmt(dp_base)} |")
    return lines


def privacy_table(history: list[RoundMetrics]) -> list[str]:
    lines = ["| institution | species | rounds trained | refused | epsilon spent | budget | delta |",
             "|---|---|---|---|---|---|---|"]
    for name, e in institution_summaries(history).items():
        lines.append(f"| {name} | {e.species} | {e.rounds_trained} | {e.refused} | {_fmt(e.epsilon)} | "
                     f"{_fmt(e.budget)} | {'–' if e.delta is None else e.delta} |")
    central = [line for line in history if line.central_dp]
    if central:
        last = central[-1].central_dp
        lines += ["", f"Institution-level DP at the server (`aggregation.central_dp`, server/central_dp.py): "
                      f"updates clipped to {last['clip']:g}, noise multiplier {last['noise_multiplier']:g}, "
                      f"{len(central)} noised rounds: **institution-level ε = {last['epsilon']:.3f} at δ = "
                      f"{last['delta']:g}** (one institution's whole update; the server, which adds the noise, "
                      f"is trusted)."]
    return lines


def plot_metrics(history: list[RoundMetrics], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    tasks = list(history[-1].central)
    for task in tasks:
        metric = get_task(task).headline_metric
        fig, ax = plt.subplots(figsize=(6, 3.5))
        rounds = [line.round for line in history]
        ax.plot(rounds, [line.central.get(task, {}).get(metric) for line in history], "o-", label="all")
        for species in history[-1].central[task].get("species", {}):
            ax.plot(rounds, [line.central.get(task, {}).get("species", {}).get(species, {}).get(metric)
                             for line in history], ".--", label=species, alpha=0.7)
        ax.set(xlabel="round", ylabel=metric, title=f"{task}: central {metric}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / f"{task}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    paths.append(_plot_epsilon(history, out))
    return paths


def _plot_epsilon(history: list[RoundMetrics], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = sorted({n for line in history for n in line.institutions})
    for name in names:
        points = [(line.round, line.institutions[name].epsilon) for line in history if name in line.institutions]
        points = [(r, e) for r, e in points if e is not None]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", label=name)
    ax.set(xlabel="round", ylabel="cumulative epsilon", title="privacy spent per institution")
    if names:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "epsilon.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_baselines(history: list[RoundMetrics], config: FederationConfig, central: dict | None
                     ) -> tuple[dict | None, dict | None]:
    """The k-mer baselines without and with DP (None where not wanted or not computable)."""
    wanted = bool(central) and config.central_evaluation.baselines
    epsilon = largest_budget(history)
    return (baselines(central) if wanted else None,
            baselines(central, dp_epsilon=epsilon) if wanted and epsilon is not None else None)


def write_report(out_dir: Path, history: list[RoundMetrics], config: FederationConfig, *,
                 baseline: dict | None = None, dp_baseline: dict | None = None) -> Path:
    """Write report.md and the plots (baselines from :func:`report_baselines`); returns the report's path."""
    epsilon = largest_budget(history)
    plots = plot_metrics(history, out_dir / PLOTS_DIR)
    lines = [f"# helixfed run `{config.name}`", "",
             f"{history[-1].round} rounds, aggregation `{config.aggregation.mode}`, tasks "
             f"{', '.join(config.tasks)}. Central evaluation on the server's held-out set. Baselines, "
             "2-fold cross-validated on that set (fitted on all its species, scored on all and on each): a k-mer "
             "logistic regression without privacy, and the same "
             "features trained with DP-SGD at the largest budget an institution reported (a site alone under "
             "DP; on this small set it is weaker than on an institution's data). \"(below)\" marks where the "
             "federated model is beaten by a baseline.", "",
             "## Results (headline metric per task and species)", "",
             *results_table(history, baseline, dp_baseline, epsilon), "",
             "## Privacy spent", "", *privacy_table(history), "", "## Plots", ""]
    lines += [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
