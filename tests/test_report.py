"""report.md's results table: both baselines beside the model, and where the model loses, said so."""

import math

from common.protocol import InstitutionRound, RoundMetrics, Status
from server.report import largest_budget, results_table


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
