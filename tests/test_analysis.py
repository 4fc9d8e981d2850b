"""Analysis: predictions for raw sequences, attention and entropy, variant impact, motif discovery,
and the analysis commands (evaluate, predict, variant, attention, motifs) on real files."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch

from common.analysis import cli as analysis_cli
from common.analysis.motifs import (
    attention_scores,
    closest_motif,
    discover_from_attention,
    discover_motifs,
)
from common.analysis.scoring import (
    HIGH_IMPACT_THRESHOLD,
    AnalysisError,
    Variant,
    align_variant,
    attention_change,
    attention_entropy,
    attention_maps,
    attention_received,
    evaluate_variant_effects,
    pad,
    predict_sequences,
    rank_correlation,
    score_variants,
    sequence_entropy,
    tokenize,
)
from common.checkpoint import save_checkpoint
from common.data.dataset import GenomicDataset, Record
from common.data.writers import write_fasta, write_split_tables
from common.evaluation import predict
from common.model import GenomicTransformer, ModelConfig
from common.synthetic.generator import generate, generate_variant_pairs
from common.synthetic.genome import Difficulty, get_species, to_string
from common.synthetic.reference import get_motif
from common.synthetic.tasks import promoter_batch
from common.tokenizer import SequenceError

TASKS = ("promoter", "splice")
PROMOTER_LENGTH = 170  # the generator's shortest promoter window


def tiny_model(*, hierarchical: bool = False, n_layers: int = 2, seed: int = 0) -> GenomicTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(d_model=32, n_heads=4, n_layers=n_layers, d_ff=64, dropout=0.0, max_len=256,
                         hierarchical=hierarchical)
    return GenomicTransformer(config, tasks=TASKS).eval()


@pytest.fixture(scope="module")
def model() -> GenomicTransformer:
    return tiny_model()


def random_sequence(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list("ACGT"), size=length))


# ---------------------------------------------------------------- predictions


def test_predictions_have_one_row_per_class_and_base(model):
    sequences = ["ACGTACGTAC", "GGGCCCAAATTTG"]

    promoter = predict_sequences(model, sequences=sequences, task="promoter")
    splice = predict_sequences(model, sequences=sequences, task="splice")

    assert [p.shape for p in promoter] == [(2,), (2,)]
    assert [p.shape for p in splice] == [(10, 3), (13, 3)]
    assert all(np.allclose(p.sum(axis=-1), 1.0) for p in promoter + splice)


def test_predictions_do_not_depend_on_padding_or_batch(model):
    rng = np.random.default_rng(0)
    sequences = [random_sequence(rng, n) for n in (20, 90, 45)]

    together = predict_sequences(model, sequences=sequences, task="promoter", batch_size=3)
    alone = [predict_sequences(model, sequences=[s], task="promoter")[0] for s in sequences]

    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=1e-5)


def test_predictions_agree_with_dataset_evaluation(model):
    rng = np.random.default_rng(1)
    records = [Record(f"r{i}", random_sequence(rng, 40 + i), i % 2) for i in range(6)]

    ours = predict_sequences(model, sequences=[r.sequence for r in records], task="promoter")
    theirs = predict(model, GenomicDataset(records, task="promoter"))

    np.testing.assert_allclose(np.stack(ours), theirs.probabilities, atol=1e-5)


def test_prediction_errors_name_the_task_and_the_position(model):
    with pytest.raises(AnalysisError, match="unknown task 'enhancer'.*promoter, splice"):
        predict_sequences(model, sequences=["ACGT"], task="enhancer")
    with pytest.raises(SequenceError, match="sequence 1, position 3: unknown character 'X'"):
        predict_sequences(model, sequences=["ACGT", "ACXT"], task="promoter")
    with pytest.raises(SequenceError, match="sequence 0: length 300 exceeds max_len 256"):
        predict_sequences(model, sequences=["A" * 300], task="promoter")


# ---------------------------------------------------------------- attention and entropy


def test_attention_maps_cover_every_layer_and_head(model):
    maps = attention_maps(model, sequence="ACGTTATAAAAGGC")

    assert maps.weights.shape == (2, 4, 14, 14)
    assert maps.tokens[:3] == ("A", "C", "G")
    np.testing.assert_allclose(maps.weights.sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(maps.select(layer=-1), maps.weights[1].mean(axis=0))
    np.testing.assert_allclose(maps.select(layer=0, head=3), maps.weights[0, 3])


def test_attention_selection_out_of_range_is_refused(model):
    maps = attention_maps(model, sequence="ACGTACGT")
    with pytest.raises(AnalysisError, match="layer 2 out of range: the model has 2 layers"):
        maps.select(layer=2)
    with pytest.raises(AnalysisError, match="head 4 out of range: the model has 4 heads"):
        maps.select(layer=0, head=4)


def test_hierarchical_attention_is_over_codons():
    maps = attention_maps(tiny_model(hierarchical=True), sequence="ATGGCCTTAGC")

    assert maps.tokens == ("ATG", "GCC", "TTA", "GC")
    assert maps.weights.shape == (2, 4, 4, 4)


def test_attention_entropy_golden_values():
    uniform = np.full((1, 4), 0.25)
    focused = np.array([[0.0, 1.0, 0.0, 0.0]])
    half = np.array([[0.5, 0.5, 0.0, 0.0]])

    assert attention_entropy(uniform) == pytest.approx([2.0])
    assert attention_entropy(focused) == pytest.approx([0.0])
    assert attention_entropy(half) == pytest.approx([1.0])


def test_attention_received_averages_over_queries():
    weights = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert attention_received(weights) == pytest.approx([0.75, 0.25])


@pytest.mark.parametrize(("sequence", "bits"), [("AAAA", 0.0), ("AACC", 1.0), ("ACGT", 2.0), ("acgtN", 2.0)])
def test_sequence_entropy_golden_values(sequence, bits):
    assert sequence_entropy(sequence) == pytest.approx(bits)


def test_sequence_entropy_refuses_a_sequence_without_bases():
    with pytest.raises(AnalysisError, match="no A, C, G or T"):
        sequence_entropy("NNNN")


# ---------------------------------------------------------------- variant alignment and impact


def test_snv_aligns_every_position():
    alignment = align_variant("ACGTACGT", "ACGAACGT")
    assert alignment.ref_index.tolist() == list(range(8))
    assert alignment.alt_index.tolist() == list(range(8))


def test_deletion_aligns_the_bases_around_it():
    alignment = align_variant("AAACCCGGG", "AAACGGG")  # two C deleted
    assert alignment.ref_index.tolist() == [0, 1, 2, 3, 6, 7, 8]
    assert alignment.alt_index.tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_insertion_aligns_the_bases_around_it():
    alignment = align_variant("AAAGGG", "AAATTGGG")
    assert alignment.ref_index.tolist() == [0, 1, 2, 3, 4, 5]
    assert alignment.alt_index.tolist() == [0, 1, 2, 5, 6, 7]


def test_codon_alignment_keeps_only_whole_codons_in_frame():
    in_frame = align_variant("AAACCCGGG", "AAAGGG", stride=3)  # one codon deleted
    frameshift = align_variant("AAACCCGGG", "AAACCGGG", stride=3)  # one base deleted

    assert (in_frame.ref_index.tolist(), in_frame.alt_index.tolist()) == ([0, 2], [0, 1])
    assert (frameshift.ref_index.tolist(), frameshift.alt_index.tolist()) == ([0], [0])


def test_attention_change_golden_values():
    same = np.eye(3)[None]  # [H=1, 3, 3]
    moved = np.roll(np.eye(3), 1, axis=1)[None]
    everything = align_variant("ACG", "ACT")
    nothing = align_variant("A", "CC")

    assert attention_change(same, same, everything) == pytest.approx(0.0)
    assert attention_change(same, moved, everything) == pytest.approx(1.0)
    assert math.isnan(attention_change(same, moved, nothing))


def test_variant_scores_are_alt_minus_ref_probabilities(model):
    ref, alt = "GCGCGCTATAAAAGGCGCGC", "GCGCGCTAGAAAAGGCGCGC"

    [impact] = score_variants(model, variants=[Variant("v", ref, alt, "promoter")])

    p_ref, p_alt = predict_sequences(model, sequences=[ref, alt], task="promoter")
    assert impact.task == "promoter"
    assert impact.score == pytest.approx(p_alt[1] - p_ref[1], abs=1e-6)
    assert set(impact.delta_probability) == set(TASKS)
    assert 0.0 <= impact.attention_change <= 1.0
    assert impact.impact == pytest.approx((abs(impact.score) + impact.attention_change) / 2)
    assert impact.label == ("high" if impact.impact >= HIGH_IMPACT_THRESHOLD else "low")


def test_an_unchanged_pair_has_no_impact(model):
    [impact] = score_variants(model, variants=[Variant("same", "ACGTACGTAC", "ACGTACGTAC")])
    assert (impact.score, impact.attention_change, impact.label) == (0.0, 0.0, "low")


def test_indels_are_scored_and_batches_do_not_change_scores(model):
    rng = np.random.default_rng(2)
    variants = []
    for i in range(6):
        ref = random_sequence(rng, 60 + 7 * i)
        alt = ref[:30] + ref[30 + i % 3 + 1:] if i % 2 else ref[:30] + "GA"[: i % 3 + 1] + ref[30:]
        variants.append(Variant(f"v{i}", ref, alt))

    batched = score_variants(model, variants=variants, batch_size=4)
    alone = [score_variants(model, variants=[v])[0] for v in variants]

    for a, b in zip(batched, alone, strict=True):
        assert a.task == b.task
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.attention_change == pytest.approx(b.attention_change, abs=1e-5)


def test_variant_errors_name_the_pair(model):
    with pytest.raises(AnalysisError, match="variant 1 \\('b'\\): unknown task 'coding'"):
        score_variants(model, variants=[Variant("a", "ACGT", "ACGA"), Variant("b", "ACGT", "ACGA", "coding")])
    with pytest.raises(SequenceError, match="sequence 3, position 2"):  # pair 1's alternative
        score_variants(model, variants=[Variant("a", "ACGT", "ACGA"), Variant("b", "ACGT", "A-GA")])


def test_rank_correlation_golden_values():
    assert rank_correlation(scores=[1, 2, 3, 4], effects=[10, 20, 30, 40])[0] == pytest.approx(1.0)
    assert rank_correlation(scores=[4, 3, 2, 1], effects=[10, 20, 30, 40])[0] == pytest.approx(-1.0)
    assert math.isnan(rank_correlation(scores=[1, 1, 1], effects=[1, 2, 3])[0])


def test_generated_variant_pairs_are_evaluated_per_task(model):
    pairs = generate_variant_pairs(species="human", n=24, seed=0, tasks=("promoter", "enhancer"))

    result = evaluate_variant_effects(model, pairs=pairs)

    # The model has no enhancer head: only the promoter pairs can be scored.
    assert result["n"] == sum(p.task == "promoter" for p in pairs)
    assert set(result["by_task"]) == {"promoter"}
    assert -1.0 <= result["spearman"] <= 1.0


# ---------------------------------------------------------------- motifs


def tata_promoters(*, n: int, seed: int) -> tuple[list[str], list[int]]:
    """Generated human promoters that all carry a TATA box, with the start of each TATAAAA core."""
    every_one_with_tata = dataclasses.replace(get_species("human"), tata_fraction=1.0)
    batch = promoter_batch(np.random.default_rng(seed), every_one_with_tata, n_pos=n, n_neg=0,
                           length=PROMOTER_LENGTH, difficulty=Difficulty(0.5))
    cores = [next(site.start for site in sites if site.motif == "MA0108.2") + 1 for sites in batch.sites]
    return [to_string(codes) for codes in batch.codes], cores


def test_closest_motif_finds_a_matrix_on_either_strand():
    ctcf = get_motif("MA0139.2").probabilities

    forward = closest_motif(ctcf)
    reverse = closest_motif(ctcf[::-1, ::-1])  # its reverse complement

    assert (forward.motif_id, forward.strand, forward.offset) == ("MA0139.2", "+", 0)
    assert forward.similarity == pytest.approx(1.0)
    assert (reverse.motif_id, reverse.strand) == ("MA0139.2", "-")
    assert reverse.similarity == pytest.approx(1.0)


def test_discovery_finds_the_tata_box_when_the_scores_point_at_it():
    """The statistics and the matching alone: scores light up each planted TATA core (plus noise),
    and the most significant attended k-mer must be TATA-like and matched to JASPAR TBP."""
    sequences, cores = tata_promoters(n=150, seed=0)
    rng = np.random.default_rng(0)
    scores = []
    for core in cores:
        score = rng.random(PROMOTER_LENGTH) * 0.01
        score[core: core + 7] += 1.0
        scores.append(score)

    motifs = discover_motifs(sequences=sequences, scores=scores, k=6, top=3)

    assert motifs[0].match.name == "TBP"
    assert motifs[0].log2_enrichment > 2 and motifs[0].p_value < 1e-6
    assert "TATA" in motifs[0].kmer or "TATA" in motifs[0].kmer.translate(str.maketrans("ACGT", "TGCA"))[::-1]


def test_discovery_refuses_mismatched_inputs():
    with pytest.raises(AnalysisError, match="sequence 0: 4 bases but 3 scores"):
        discover_motifs(sequences=["ACGT"], scores=[np.ones(3)])
    with pytest.raises(AnalysisError, match="k must lie in 3..12"):
        discover_motifs(sequences=["ACGT"], scores=[np.ones(4)], k=2)


def test_attention_scores_are_a_distribution_over_bases(model):
    hierarchical = tiny_model(hierarchical=True)
    sequences = ["ACGTACGTACG", "TTTTAAAACCCCGGGG"]

    for scorer in (model, hierarchical):
        scores = attention_scores(scorer, sequences=sequences)
        assert [s.shape for s in scores] == [(11,), (16,)]
        assert all(s.sum() == pytest.approx(1.0) for s in scores)


def test_motifs_from_a_model_whose_attention_looks_at_the_tata_box():
    """End to end from a model's own attention maps, on generated promoters.

    What it proves: when a model's last-layer attention concentrates on the TATA box, discovery from
    those maps (attention_scores -> attended windows -> enrichment -> closest JASPAR matrix) names
    TBP, on promoters the model never saw. What it does not prove: that ordinary training makes a
    model attend there. A tiny model trained on the promoter task for a few seconds does not learn
    the TATA box (measured: accuracy 0.57 after 2,750 steps, d_model 32, 2 layers), so here the last
    layer's attention is trained directly, for a few dozen steps, to put its mass on the planted
    TATA cores; it may well learn the TATA position rather than its bases."""
    train_sequences, train_cores = tata_promoters(n=200, seed=1)
    model = tiny_model(n_layers=1, seed=1).train()
    tokens = pad(tokenize(train_sequences, max_len=256))
    target = torch.zeros(tokens.shape)
    for row, core in enumerate(train_cores):
        target[row, core: core + 7] = 1.0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        rows = torch.randint(0, len(train_sequences), (32,), generator=generator)
        last = model(tokens[rows], "promoter", return_attention=True).attentions[-1]  # [B, H, T, T]
        mass_on_tata = (last * target[rows][:, None, None, :]).sum(dim=-1)  # [B, H, T]
        loss = -torch.log(mass_on_tata + 1e-6).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_sequences, _ = tata_promoters(n=100, seed=2)

    motifs = discover_from_attention(model.eval(), sequences=test_sequences, k=6, top=3)

    assert motifs[0].match.name == "TBP"
    assert motifs[0].p_value < 1e-6


# ---------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("analysis")
    save_checkpoint(root / "final", weights=model.state_dict(), model_config=model.config, tasks=model.tasks, round=2)
    for task, length in (("promoter", PROMOTER_LENGTH), ("splice", 90)):
        records = [r for species in ("human", "fruit_fly")
                   for r in generate(task=task, species=species, n=30, seed=3, length=length).records]
        (root / "data" / task).mkdir(parents=True)
        write_split_tables(root / "data" / task, {"train": records[::2], "test": records[1::2]})
    return root


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="helixfed")
    subparsers = parser.add_subparsers()
    for register in (analysis_cli.add_evaluate_parser, analysis_cli.add_predict_parser,
                     analysis_cli.add_variant_parser, analysis_cli.add_attention_parser,
                     analysis_cli.add_motifs_parser):
        register(subparsers)
    args = parser.parse_args(list(argv))
    return args.func(args)


def read_tsv(path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))


def test_evaluate_reports_every_task_per_species_beside_the_baseline(workspace, capsys):
    assert run_command("evaluate", "--checkpoint", str(workspace / "final"), "--data", str(workspace / "data"),
                       "--json") == 0

    report = json.loads(capsys.readouterr().out)
    assert set(report["tasks"]) == {"promoter", "splice"}
    promoter = report["tasks"]["promoter"]
    assert promoter["model"]["num-examples"] == 30
    assert "mcc" in promoter["model"] and "mcc" in promoter["kmer"]
    assert set(promoter["species"]) == {"human", "fruit_fly"}
    assert promoter["species"]["human"]["kmer"] is not None
    assert "pr_auc_mean" in report["tasks"]["splice"]["model"]


def test_evaluate_table_and_missing_task_folder(workspace, tmp_path, capsys):
    assert run_command("evaluate", "--checkpoint", str(workspace / "final"), "--data", str(workspace / "data"),
                       "--no-baseline") == 0
    assert "promoter per species" in capsys.readouterr().out

    assert run_command("evaluate", "--checkpoint", str(workspace / "final"), "--data", str(tmp_path)) == 1
    assert "holds no folder named after a task" in capsys.readouterr().err


def test_evaluate_scores_one_labelled_fasta_file(workspace, tmp_path, capsys):
    records = generate(task="promoter", species="human", n=24, seed=9, length=PROMOTER_LENGTH).records
    fasta = tmp_path / "labelled.fa"
    write_fasta(records, fasta)

    assert run_command("evaluate", "--checkpoint", str(workspace / "final"), "--data", str(fasta),
                       "--task", "promoter", "--json") == 0
    report = json.loads(capsys.readouterr().out)["tasks"]["promoter"]
    assert report["model"]["num-examples"] == 24 and report["kmer"] is None
    assert report["source"].endswith("labelled.fa")

    assert run_command("evaluate", "--checkpoint", str(workspace / "final"), "--data", str(fasta)) == 1
    assert "pass --task" in capsys.readouterr().err


def test_predict_writes_probabilities_and_labels(workspace, tmp_path, model):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTACGTTATAAAAG\nGCGC\n>b\nGGGCCCAAATTT\n")
    out = tmp_path / "out.tsv"

    assert run_command("predict", "--checkpoint", str(workspace / "final"), "--task", "promoter",
                       "--input", str(fasta), "--out", str(out)) == 0

    rows = read_tsv(out)
    expected = predict_sequences(model, sequences=["ACGTACGTTATAAAAGGCGC", "GGGCCCAAATTT"], task="promoter")
    assert [r["id"] for r in rows] == ["a", "b"]
    for row, probabilities in zip(rows, expected, strict=True):
        assert float(row["p_promoter"]) == pytest.approx(probabilities[1], abs=1e-5)
        assert row["label"] == ("promoter" if probabilities[1] > 0.5 else "non-promoter")


def test_predict_splice_writes_one_row_per_base(workspace, tmp_path):
    table = tmp_path / "in.tsv"
    table.write_text("id\tsequence\nx\tACGTAGGTAAG\n")
    out = tmp_path / "out.tsv"

    assert run_command("predict", "--checkpoint", str(workspace / "final"), "--task", "splice",
                       "--input", str(table), "--out", str(out)) == 0

    rows = read_tsv(out)
    assert [r["position"] for r in rows] == [str(i) for i in range(1, 12)]
    assert set(rows[0]) == {"id", "position", "base", "p_neither", "p_donor", "p_acceptor", "label"}


def test_predict_names_file_line_record_and_position_of_a_bad_base(workspace, tmp_path, capsys):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(">a\nACGT\n>b\nACGT\nAC#T\n")

    assert run_command("predict", "--checkpoint", str(workspace / "final"), "--task", "promoter",
                       "--input", str(fasta)) == 1

    assert f"{fasta}, line 5 (record 'b'): unknown base '#' at sequence position 7" in capsys.readouterr().err


def test_variant_command_scores_snvs_and_indels(workspace, tmp_path):
    table = tmp_path / "variants.tsv"
    table.write_text("id\tref\talt\ttask\n"
                     "snv\tGCGCTATAAAAGGCG\tGCGCTAGAAAAGGCG\tpromoter\n"
                     "del\tGCGCTATAAAAGGCG\tGCGCTAAAAGGCG\t\n")
    out = tmp_path / "scores.tsv"

    assert run_command("variant", "--checkpoint", str(workspace / "final"), "--input", str(table),
                       "--out", str(out)) == 0

    rows = read_tsv(out)
    assert [r["id"] for r in rows] == ["snv", "del"]
    assert rows[0]["task"] == "promoter"
    assert {r["label"] for r in rows} <= {"high", "low"}
    assert all(0.0 <= float(r["impact"]) <= 1.0 for r in rows)


def test_variant_command_refuses_a_table_without_alt(workspace, tmp_path, capsys):
    table = tmp_path / "variants.tsv"
    table.write_text("id\tref\nv\tACGT\n")

    assert run_command("variant", "--checkpoint", str(workspace / "final"), "--input", str(table)) == 1
    assert "lacks column(s) alt" in capsys.readouterr().err


def test_attention_command_draws_a_png(workspace, tmp_path, capsys):
    out = tmp_path / "attention.png"

    assert run_command("attention", "--checkpoint", str(workspace / "final"), "--sequence", "GCGCGCTATAAAAGGCGCGC",
                       "--out", str(out), "--layer", "0", "--head", "1") == 0

    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "attention entropy: mean" in capsys.readouterr().out
    assert run_command("attention", "--checkpoint", str(workspace / "final"), "--sequence", "ACGT",
                       "--out", str(out), "--head", "9") == 1
    assert "head 9 out of range" in capsys.readouterr().err


def test_motifs_command_prints_a_table_and_draws_logos(workspace, tmp_path, capsys):
    out = tmp_path / "logos.png"

    assert run_command("motifs", "--checkpoint", str(workspace / "final"), "--data", str(workspace / "data"),
                       "--split", "train", "--k", "4", "--top", "2", "--out", str(out), "--json") == 0

    report = json.loads(capsys.readouterr().out)
    assert report["sequences"] > 0
    assert 1 <= len(report["motifs"]) <= 2
    assert report["motifs"][0]["match"]["motif_id"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
