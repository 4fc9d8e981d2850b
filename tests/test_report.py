"""report.md's results table: both baselines beside the model, and where the model loses, said so."""

import math

import numpy as np
import pytest

from common.analysis.baselines import fit_predict_baseline
from common.data.dataset import GenomicDataset, Record
from common.metrics import task_metrics
from common.protocol import InstitutionRound, RoundMetrics, Status
from server.report import cross_validated_baseline, largest_budget, results_table


def line(round_, mcc, budgets=()):
    institutions = {f"site-{i}": InstitutionRound(species="human", status=Status.TRAINED, budget=b)
                    for i, b in enumerate(budgets)}
    return RoundMetrics(round=round_, central={"promoter": {"mcc": mcc, "species": {"human": {"mcc": mcc}}}},
                        institutions=institutions)


def test_rows_show_both_baselines_and_mark_where_the_model_is_below():
    history = [line(0, 0.0), line(3, 0.5, budgets=(3.0, 8.0, math.inf))]

    rows = results_table(history, {"promoter": {"all": 0.4, "human": 0.6}},
                         {"promoter": {"all": 0.3, "human": 0.2}}, largest_budget(history))

    assert rows[0].endswith("| k-mer baseline | DP k-mer (ε=8) |")
    assert rows[2] == "| promoter | all | mcc | 0.000 | 0.500 | 0.400 | 0.300 |"
    assert rows[3] == "| promoter | human | mcc | 0.000 | 0.500 (below) | 0.600 | 0.200 |"


def test_no_budget_without_dp():
    assert largest_budget([line(0, 0.0), line(1, 0.1, budgets=(math.inf,))]) is None


def _records(species, n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sequence = "".join(rng.choice(list("ACGT"), 60))
        label = i % 2
        if label:  # positives carry a motif somewhere
            at = int(rng.integers(0, 50))
            sequence = sequence[:at] + "GGGCGGGGC" + sequence[at + 9:]
        out.append(Record(f"{species}-{i}", sequence[:60], label, species))
    return out


def test_species_rows_score_the_pooled_baseline_per_species():
    """The species rows are the pooled fit's out-of-fold predictions scored per species, so a species
    with too few records to fit a baseline of its own still gets the pooled bar, and each row is
    exactly what that baseline scores on the species' records."""
    dataset = GenomicDataset(_records("human", 120, 0) + _records("yeast", 6, 1), task="promoter")

    table = cross_validated_baseline(dataset)

    assert set(table) == {"all", "human", "yeast"}
    order = np.random.default_rng(0).permutation(len(dataset))
    folds = [order[: len(order) // 2].tolist(), order[len(order) // 2:].tolist()]
    expected = {"all": [], "human": []}
    for train_rows, test_rows in (folds, folds[::-1]):
        train, test = (GenomicDataset([dataset.record(i) for i in rows], task="promoter") for rows in (train_rows, test_rows))
        prob = fit_predict_baseline(train, test, task="promoter", method="kmer")
        labels, species = test.label_array(), np.asarray(test.species)
        expected["all"].append(task_metrics("promoter", labels, prob)["mcc"])
        expected["human"].append(task_metrics("promoter", labels[species == "human"], prob[species == "human"])["mcc"])
    assert table["all"] == pytest.approx(np.mean(expected["all"]))
    assert table["human"] == pytest.approx(np.mean(expected["human"]))
    assert table["all"] > 0.5  # the motif is learnt: the check above compares real scores
