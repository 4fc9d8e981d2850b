"""The DP k-mer baseline: it learns planted signal, spends what it is given and no more, and its
features never look at the data's statistics."""

import numpy as np
import pytest

from common.analysis.dp_baselines import (
    DPSettings,
    enrichment_features,
    noise_multiplier_for,
    run_dp_baseline,
)
from common.data.dataset import GenomicDataset
from common.synthetic.generator import generate


def synthetic(task, n, seed):
    return GenomicDataset(generate(task=task, species="human", n=n, seed=seed, difficulty=0.2).records, task=task)


@pytest.mark.parametrize("task, metric, floor", [("enhancer", "mcc", 0.2), ("splice", "pr_auc_mean", 0.05)])
def test_dp_kmer_baseline_learns_planted_signal_within_its_budget(task, metric, floor):
    train, test = synthetic(task, 800, 0), synthetic(task, 300, 1)

    scores = run_dp_baseline(train, test, task=task, settings=DPSettings(epsilon=8.0, epochs=10))

    assert scores[metric] > floor  # splice: chance is the site prevalence, well under 0.05
    assert 7.0 < scores["epsilon"] <= 8.0 + 1e-6


def test_smaller_budget_means_more_noise():
    settings = [DPSettings(epsilon=e) for e in (1.0, 3.0, 8.0)]
    sigmas = [noise_multiplier_for(s, records=2000) for s in settings]
    assert sigmas[0] > sigmas[1] > sigmas[2] > 0


def test_features_are_fixed_in_advance():
    # Standardising with the data's own means would leak it; each row's features depend on that row only.
    rows = ["ACGTACGTTTGACA", "GGGGCCCCAAAA", "ATATATATATGC"]
    together = enrichment_features(rows, k=3)
    alone = np.vstack([enrichment_features([r], k=3) for r in rows])
    np.testing.assert_array_equal(together, alone)
    assert together.shape == (3, 4 + 16 + 64)
    # A sequence of one repeated base: A's enrichment is 4 x its frequency (1.0) minus 1.
    assert enrichment_features(["AAAAAAAA"], k=1)[0].tolist() == [3.0, -1.0, -1.0, -1.0]


@pytest.mark.parametrize("task", ["promoter", "splice"])
def test_empty_poisson_batches_leave_the_model_finite(task):
    import torch

    from common.analysis.dp_baselines import train_dp_baseline

    train = synthetic(task, 60, 2)  # expected batch 1 of 60: about a third of the 60 steps are empty
    model, epsilon = train_dp_baseline(train, DPSettings(epsilon=8.0, epochs=1, batch_size=1))
    assert all(torch.isfinite(p).all() for p in model.parameters()) and epsilon <= 8.0 + 1e-6


def test_weights_after_clipping_move_the_baselines_calls_toward_the_heavier_class():
    """The same weighting the federation's trainer offers (common/clipping.py): with the negatives' clipped
    gradients at a fifth, the baseline calls far more windows positive than with the positives' at a fifth."""
    from common.analysis.dp_baselines import predict_dp_baseline, train_dp_baseline

    train, test = synthetic("enhancer", 600, 3), synthetic("enhancer", 300, 4)
    called = {}
    for name, weights in (("positives heavier", (0.2, 1.0)), ("negatives heavier", (1.0, 0.2))):
        settings = DPSettings(epsilon=50.0, epochs=5, weights_after_clipping=weights)
        model, epsilon = train_dp_baseline(train, settings)
        called[name] = float((predict_dp_baseline(model, test, k=settings.k).argmax(axis=1) == 1).mean())
        assert epsilon <= 50.0 + 1e-6  # the weights change nothing in the accounting
    assert called["positives heavier"] > called["negatives heavier"] + 0.2


@pytest.mark.parametrize("task, weights", [("splice", (1.0, 1.0, 1.0)), ("enhancer", (0.5, 1.0, 1.0)),
                                           ("enhancer", (0.5, 2.0))])
def test_weights_after_clipping_must_fit_a_sequence_task(task, weights):
    from common.analysis.dp_baselines import train_dp_baseline

    with pytest.raises(ValueError, match="weights after clipping"):
        train_dp_baseline(synthetic(task, 40, 5), DPSettings(epsilon=8.0, epochs=1, weights_after_clipping=weights))
