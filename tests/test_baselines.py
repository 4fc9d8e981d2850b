"""Baselines: features pinned on hand-worked examples, above chance on planted signals, the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from common import protocol
from common.analysis.baseline_cli import add_baseline_parser
from common.analysis.baselines import (
    BaselineError,
    KmerSpectrum,
    MotifScanner,
    PositionalKmers,
    SplicePwmScores,
    applicable_methods,
    base_codes,
    build_model,
    position_windows,
    run_baseline,
)
from common.data.dataset import GenomicDataset, Record
from common.synthetic import reference

TATA = "TATAAAAG"
DONOR_SITE = "CAGGTAAGT"  # exon CAG | intron GTAAGT; the labelled base is the G at index 2
ACCEPTOR_SITE = "TTTCTTTCCTTTTCAGG"  # pyrimidine tract, AG | G; the labelled base is the G at index 15


def _random_bases(rng: np.random.Generator, length: int) -> list[str]:
    return list(rng.choice(list("ACGT"), size=length))


def _promoter_set(rng: np.random.Generator, n: int, length: int = 100) -> GenomicDataset:
    """Half the sequences carry a TATA box at a random place, half do not."""
    records = []
    for i in range(n):
        bases = _random_bases(rng, length)
        label = i % 2
        if label:
            start = int(rng.integers(0, length - len(TATA)))
            bases[start: start + len(TATA)] = TATA
        records.append(Record(f"p{i}", "".join(bases), label))
    return GenomicDataset(records, task="promoter")


def _splice_set(rng: np.random.Generator, n: int, length: int = 120) -> GenomicDataset:
    """Each sequence: one donor in the first half, one acceptor in the second, labelled per base."""
    records = []
    for i in range(n):
        bases, labels = _random_bases(rng, length), np.zeros(length, dtype=np.int64)
        donor = int(rng.integers(0, length // 2 - len(DONOR_SITE)))
        bases[donor: donor + len(DONOR_SITE)] = DONOR_SITE
        labels[donor + 2] = 1
        acceptor = int(rng.integers(length // 2, length - len(ACCEPTOR_SITE)))
        bases[acceptor: acceptor + len(ACCEPTOR_SITE)] = ACCEPTOR_SITE
        labels[acceptor + 15] = 2
        records.append(Record(f"s{i}", "".join(bases), labels))
    return GenomicDataset(records, task="splice")


@pytest.fixture(scope="module")
def promoter_data() -> tuple[GenomicDataset, GenomicDataset]:
    rng = np.random.default_rng(7)
    return _promoter_set(rng, 300), _promoter_set(rng, 200)


@pytest.fixture(scope="module")
def splice_data() -> tuple[GenomicDataset, GenomicDataset]:
    rng = np.random.default_rng(11)
    return _splice_set(rng, 150), _splice_set(rng, 80)


# ---------------------------------------------------------------- features on hand-worked examples


def test_kmer_spectrum_frequencies_per_length():
    # AAC: 1-mers A A C; 2-mers AA AC.
    features = KmerSpectrum(k=2).fit_transform(["AAC"])

    expected_1 = [2 / 3, 1 / 3, 0, 0]
    expected_2 = np.zeros(16)
    expected_2[[0, 1]] = 0.5  # AA = 0, AC = 1 in base-4 (A0 C1 G2 T3)
    np.testing.assert_allclose(features[0], np.concatenate([expected_1, expected_2]), atol=1e-7)


def test_kmer_spectrum_both_strands_adds_the_reverse_complement():
    # AAC and its reverse complement GTT: A 2, C 1, G 1, T 2.
    features = KmerSpectrum(k=1, both_strands=True).fit_transform(["AAC"])

    np.testing.assert_allclose(features[0], [2 / 6, 1 / 6, 1 / 6, 2 / 6], atol=1e-7)


def test_kmer_spectrum_skips_kmers_holding_n_and_keeps_sequences_apart():
    features = KmerSpectrum(k=2).fit_transform(["ANA", "CG"])

    # ANA: both 1-mers are A, no 2-mer is valid; CG: its own counts, nothing from ANA.
    np.testing.assert_allclose(features[0], np.concatenate([[1, 0, 0, 0], np.zeros(16)]), atol=1e-7)
    assert features[1][:4].tolist() == pytest.approx([0, 0.5, 0.5, 0])
    assert features[1][4 + 6] == pytest.approx(1.0)  # CG = 1*4 + 2


def test_position_windows_pad_with_n_and_center_each_base():
    windows = position_windows([base_codes("ACG"), base_codes("T")], left=1, right=1)

    n = 4
    assert windows.tolist() == [[n, 0, 1], [0, 1, 2], [1, 2, n], [n, 3, n]]


def test_positional_kmers_one_hot_per_offset():
    features = PositionalKmers(k=2).fit_transform(np.array([[0, 1]], dtype=np.int8))  # window "AC"

    # k=1: A at offset 0 -> column 0, C at offset 1 -> 4 + 1; k=2: AC (index 1) at offset 0 -> 8 + 1.
    assert features.shape == (1, 2 * 4 + 1 * 16)
    assert sorted(features.nonzero()[1].tolist()) == [0, 5, 9]


def _best_log_odds(motif: reference.Motif, site: str) -> float:
    """Log-odds of ``site`` under ``motif`` against a uniform background, column by column."""
    return sum(float(np.log(motif.probabilities["ACGT".index(b), j] / 0.25)) for j, b in enumerate(site))


def test_pwm_scan_finds_a_planted_tata_box_on_either_strand():
    motif = reference.get_motif("MA0108.3")  # TATA core, 7 columns
    flank = "GCGCGCGCGC"
    forward = flank + "TATAAAA" + flank
    reverse = flank + "TTTTATA" + flank  # the same box on the other strand

    features = MotifScanner(motif_ids=["MA0108.3"]).fit_transform([forward, reverse, flank * 2])

    expected = _best_log_odds(motif, "TATAAAA")
    assert features[0, 0] == pytest.approx(expected)
    assert features[1, 0] == pytest.approx(expected)
    assert features[2, 0] < expected - 10  # no box: far below
    assert features[0, 1] >= features[0, 0]  # total affinity counts the best site and more


def test_pwm_scan_reads_a_short_sequence_as_padded_with_n():
    motif = reference.get_motif("MA0108.3")

    features = MotifScanner(motif_ids=["MA0108.3"]).fit_transform(["TATA"])

    assert features[0, 0] == pytest.approx(_best_log_odds(motif, "TATA"))


def test_splice_pwm_scores_the_centre_base_as_the_labelled_base():
    codes = base_codes("A" * 30 + DONOR_SITE + "A" * 30)
    centre = 30 + 2  # the last exon base, G of CAG
    windows = position_windows([codes])

    scores = SplicePwmScores().fit_transform(windows)

    assert scores[centre, 0] == pytest.approx(_best_log_odds(reference.DONOR, DONOR_SITE))
    assert scores[:, 0].argmax() == centre


# ---------------------------------------------------------------- above chance on planted signals


@pytest.mark.parametrize("method", ["kmer", "pwm"])
def test_promoter_baselines_learn_a_planted_tata_box(promoter_data, method):
    train, test = promoter_data

    metrics = run_baseline(train, test, task="promoter", method=method, k=4)

    assert set(metrics) == set(protocol.SEQUENCE_METRIC_KEYS)
    assert metrics[protocol.MCC] > 0.5
    assert metrics[protocol.AUROC] > 0.85


@pytest.mark.parametrize("method", ["kmer", "pwm"])
def test_splice_baselines_find_planted_sites(splice_data, method):
    train, test = splice_data

    metrics = run_baseline(train, test, task="splice", method=method)

    assert set(metrics) == set(protocol.POSITION_METRIC_KEYS)
    # Chance PR-AUC is the site rate, 1/120.
    assert metrics[protocol.PR_AUC_MEAN] > 0.8
    assert metrics[protocol.TOPK_DONOR] > 0.7 and metrics[protocol.TOPK_ACCEPTOR] > 0.7
    assert metrics[protocol.ACCURACY] > 0.98


def test_splice_model_without_acceptors_in_training_scores_them_zero(splice_data):
    train, test = splice_data
    donors_only = GenomicDataset(
        [Record(i, s, np.where(lab.numpy() == 2, 0, lab.numpy()))
         for i, s, lab in zip(train.ids, train.sequences, train.labels, strict=True)], task="splice")

    metrics = run_baseline(donors_only, test, task="splice", method="pwm")

    assert metrics[protocol.PR_AUC_DONOR] > 0.8
    assert metrics[protocol.TOPK_ACCEPTOR] < 0.2  # every acceptor probability is 0: ranks are ties


# ---------------------------------------------------------------- errors


def test_pwm_does_not_apply_to_coding():
    assert applicable_methods("coding") == ("kmer",)
    with pytest.raises(BaselineError, match="method 'pwm' does not apply to task 'coding'; it applies to"):
        build_model(task="coding", method="pwm")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"task": "promoter", "method": "svm"}, "unknown baseline method 'svm'; known methods: kmer, pwm"),
    ({"task": "promoter", "method": "kmer", "k": 7}, r"k must be an integer in 1\.\.6, got 7"),
    ({"task": "promoter", "method": "kmer", "k": 0}, r"k must be an integer in 1\.\.6, got 0"),
    ({"task": "splice", "method": "kmer", "both_strands": True}, "both_strands applies to sequence tasks"),
])
def test_build_model_rejects_bad_requests(kwargs, message):
    with pytest.raises(BaselineError, match=message):
        build_model(**kwargs)


def test_run_baseline_rejects_datasets_of_another_task(promoter_data):
    train, test = promoter_data

    with pytest.raises(BaselineError, match="is for task 'promoter', not 'enhancer'"):
        run_baseline(train, test, task="enhancer", method="kmer")


def test_run_baseline_rejects_a_single_class_training_set(promoter_data):
    _, test = promoter_data
    negatives = GenomicDataset([Record("a", "ACGTACGT", 0), Record("b", "TTGACCAA", 0)], task="promoter")

    with pytest.raises(BaselineError, match="holds only class 'non-promoter'"):
        run_baseline(negatives, test, task="promoter", method="kmer")


def test_motif_scanner_rejects_an_unknown_motif():
    with pytest.raises(BaselineError, match="unknown motif 'MA9999.1'"):
        MotifScanner(motif_ids=["MA9999.1"]).fit(["ACGT"])


# ---------------------------------------------------------------- helixfed baseline


def _write_split(path: Path, dataset: GenomicDataset) -> None:
    """Our generated layout: TSV with id, species, sequence, label (a digit string per base for splice)."""
    column = "labels" if dataset.task.per_position else "label"
    rows = [f"id\tspecies\tsequence\t{column}"]
    for record_id, sequence, label in zip(dataset.ids, dataset.sequences, dataset.labels, strict=True):
        text = "".join(map(str, label.tolist())) if dataset.task.per_position else str(int(label))
        rows.append(f"{record_id}\thuman\t{sequence}\t{text}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="helixfed")
    add_baseline_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def institution(tmp_path_factory, promoter_data, splice_data) -> Path:
    root = tmp_path_factory.mktemp("institution")
    for task, (train, test) in (("promoter", promoter_data), ("splice", splice_data)):
        for split, data in (("train", train), ("val", test), ("test", test)):
            _write_split(root / task / f"{split}.tsv", data)
    return root


def test_cli_json_reports_every_applicable_method(institution, capsys):
    args = _parse(["baseline", "--data", str(institution), "--task", "promoter", "--k", "3", "--json"])

    code = args.func(args)

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(report["results"]) == {"kmer", "pwm"}
    assert report["test"][protocol.NUM_EXAMPLES] == 200
    assert report["results"]["pwm"][protocol.MCC] > 0.5


def test_cli_table_on_a_task_folder(institution, capsys):
    args = _parse(["baseline", "--data", str(institution / "splice"), "--task", "splice", "--method", "pwm"])

    code = args.func(args)

    out = capsys.readouterr().out
    assert code == 0
    assert protocol.PR_AUC_MEAN in out and "pwm" in out


def test_cli_json_writes_an_undefined_metric_as_null(institution, promoter_data, tmp_path, capsys):
    train, test = promoter_data
    positives = GenomicDataset([Record(i, s, 1) for i, s, lab in zip(test.ids, test.sequences, test.labels,
                                                                     strict=True) if int(lab) == 1],
                               task="promoter")
    _write_split(tmp_path / "train.tsv", train)
    _write_split(tmp_path / "test.tsv", positives)
    args = _parse(["baseline", "--data", str(tmp_path), "--task", "promoter", "--method", "pwm", "--json"])

    code = args.func(args)

    results = json.loads(capsys.readouterr().out)["results"]["pwm"]
    assert code == 0
    assert results[protocol.AUROC] is None and results[protocol.AUPRC] is None  # one class: undefined
    assert results[protocol.ACCURACY] > 0.5


def test_cli_reports_a_missing_folder_and_returns_1(tmp_path, capsys):
    args = _parse(["baseline", "--data", str(tmp_path / "nowhere"), "--task", "promoter"])

    code = args.func(args)

    assert code == 1
    assert "nowhere" in capsys.readouterr().err


def test_cli_reports_a_method_that_does_not_apply(institution, capsys):
    coding = institution / "coding"
    _write_split(coding / "train.tsv", GenomicDataset(
        [Record("a", "ATGAAATAG", 1), Record("b", "CCCCCCCCC", 0)], task="coding"))
    _write_split(coding / "test.tsv", GenomicDataset([Record("c", "ATGCCCTAA", 1)], task="coding"))
    args = _parse(["baseline", "--data", str(institution), "--task", "coding", "--method", "pwm"])

    code = args.func(args)

    assert code == 1
    assert "does not apply to task 'coding'" in capsys.readouterr().err


def test_cli_rejects_k_out_of_range(capsys):
    with pytest.raises(SystemExit):
        _parse(["baseline", "--data", "x", "--task", "promoter", "--k", "9"])

    assert "expected an integer in 1..6, got 9" in capsys.readouterr().err
