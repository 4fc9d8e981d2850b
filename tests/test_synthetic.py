"""The synthetic generator: reference data, statistics per species, determinism, oracle, variant
pairs, the federation writer, and a k-mer baseline that must land between chance and perfect."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from common.data.dataset import DataError, GenomicDataset
from common.synthetic.federation import InstitutionSpec, write_federation_data
from common.synthetic.generator import (
    SPECIES,
    SyntheticError,
    generate,
    generate_variant_pairs,
)
from common.synthetic.genome import SENSE_CODONS, expected_coding_gc, to_codes
from common.synthetic.reference import (
    ACCEPTOR,
    CODON_USAGE,
    DONOR,
    GENETIC_CODE,
    MOTIFS,
    counts_to_probabilities,
    get_motif,
    searchable_motifs,
)

REPO = Path(__file__).resolve().parents[1]
SPLICE_SPECIES = [name for name, profile in SPECIES.items() if "splice" in profile.tasks]
GC = ("G", "C")


def gc_of(sequences: list[str]) -> float:
    return float(np.mean([sum(s.count(b) for b in GC) / len(s) for s in sequences]))


# --- reference data -----------------------------------------------------------------------------
def test_jaspar_counts_become_probabilities_with_the_reference_pseudocount():
    # MA0108.2 column 1: A 61, C 145, G 152, T 31 (N = 389); p = (count + 0.2) / (N + 0.8)
    expected = np.array([61.2, 145.2, 152.2, 31.2]) / 389.8

    column = get_motif("MA0108.2").probabilities[:, 0]

    np.testing.assert_allclose(column, expected)


def test_every_matrix_is_a_probability_matrix_with_an_id_and_a_source():
    for motif in MOTIFS.values():
        assert motif.probabilities.shape == (4, motif.width)
        np.testing.assert_allclose(motif.probabilities.sum(axis=0), 1.0)
        assert (motif.probabilities > 0).all() or motif.id == "KOZAK"  # Kozak's ATG is fixed
        assert motif.source
    assert {"MA0108.2", "MA0060.3", "MA0079.5", "MA0102.5", "MA0039.5", "MA0095.4", "MA0139.2"} <= set(MOTIFS)
    assert all(m.kind != "consensus" for m in searchable_motifs())


def test_reference_consensus_strings_read_as_published():
    assert get_motif("MA0108.3").consensus == "TATAAAA"
    assert get_motif("MA0079.5").consensus == "GGGGCGGGG"
    assert get_motif("MA0102.5").consensus == "ATTGCACAAT"
    assert DONOR.consensus.upper() == "CAGGTAAGT"
    assert ACCEPTOR.consensus.upper().endswith("CAGGT")


def test_counts_with_wrong_shape_are_rejected():
    with pytest.raises(ValueError, match="4 rows"):
        counts_to_probabilities([[1, 2], [3, 4]])


def test_unknown_motif_names_the_known_ones():
    with pytest.raises(KeyError, match="MA0108.2"):
        get_motif("MA9999.1")


def test_codon_tables_cover_all_64_codons_and_sum_to_one_per_amino_acid():
    assert len(GENETIC_CODE) == 64
    for table in CODON_USAGE.values():
        for amino_acid in set(GENETIC_CODE.values()):
            total = sum(f for c, f in table.items() if GENETIC_CODE[c] == amino_acid)
            assert total == pytest.approx(1.0, abs=0.015)


# --- statistics per species ---------------------------------------------------------------------
@pytest.mark.parametrize("species", list(SPECIES))
def test_background_gc_matches_the_species_target(species):
    data = generate(task="promoter", species=species, n=600, seed=1)

    background = [r.sequence for r, o in zip(data.records, data.origins, strict=True) if o == "background"]

    assert len(background) > 50
    assert gc_of(background) == pytest.approx(SPECIES[species].genome_gc, abs=0.02)


@pytest.mark.parametrize("species", list(SPECIES))
def test_tata_boxes_are_planted_in_the_configured_fraction_at_the_right_distance(species):
    profile = SPECIES[species]
    tata = "SIGMA70-10" if profile.promoter_style == "bacterium" else "MA0108.2"
    data = generate(task="promoter", species=species, n=1000, seed=2)
    tss = 200 - 200 // 4
    promoters = [sites for sites, o in zip(data.sites, data.origins, strict=True) if o == "promoter"]

    planted = [s for sites in promoters for s in sites if s.motif == tata]

    assert len(planted) / len(promoters) == pytest.approx(profile.tata_fraction, abs=0.06)
    upstream = {"bacterium": (12, 14), "yeast": (40, 120)}.get(profile.promoter_style, (26, 31))
    core_offset = 0 if tata == "SIGMA70-10" else 1
    distances = [tss - (s.start + core_offset) for s in planted]
    assert min(distances) >= upstream[0] and max(distances) <= upstream[1]


@pytest.mark.parametrize("species", SPLICE_SPECIES)
def test_donors_sit_before_gt_and_acceptors_end_an_ag(species):
    data = generate(task="splice", species=species, n=150, seed=3)
    donors = acceptors = donor_gt = acceptor_ag = 0

    for record in data.records:
        seq = record.sequence
        for i in np.flatnonzero(record.label == 1):
            donors, donor_gt = donors + 1, donor_gt + (seq[i + 1 : i + 3] == "GT")
        for i in np.flatnonzero(record.label == 2):
            acceptors, acceptor_ag = acceptors + 1, acceptor_ag + (seq[i - 1 : i + 1] == "AG")

    assert donors > 100 and acceptors > 100
    assert donor_gt / donors >= 0.99
    assert acceptor_ag / acceptors >= 0.99


def _orf_codon_counts(data) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record, sites in zip(data.records, data.sites, strict=True):
        for site in (s for s in sites if s.motif == "ORF"):
            orf = record.sequence[site.start : site.start + site.width]
            for k in range(0, len(orf) - 2, 3):
                counts[orf[k : k + 3]] = counts.get(orf[k : k + 3], 0) + 1
    return counts


@pytest.mark.parametrize("species", list(SPECIES))
def test_orf_codon_usage_correlates_with_the_species_table(species):
    table = CODON_USAGE[SPECIES[species].codon_column]
    counts = _orf_codon_counts(generate(task="coding", species=species, n=400, seed=4))
    observed, expected = [], []

    for codon in SENSE_CODONS:
        synonyms = [c for c in SENSE_CODONS if GENETIC_CODE[c] == GENETIC_CODE[codon]]
        observed.append(counts.get(codon, 0) / max(sum(counts.get(c, 0) for c in synonyms), 1))
        expected.append(table[codon] / sum(table[c] for c in synonyms))

    assert np.corrcoef(observed, expected)[0, 1] >= 0.9


@pytest.mark.parametrize("species", list(SPECIES))
def test_orf_gc_matches_the_codon_table(species):
    data = generate(task="coding", species=species, n=400, seed=5)
    orfs = [r.sequence[s.start : s.start + s.width] for r, sites in zip(data.records, data.sites, strict=True)
            for s in sites if s.motif == "ORF" and s.width > 60]

    assert gc_of(orfs) == pytest.approx(expected_coding_gc(SPECIES[species].codon_column), abs=0.02)


def test_mammalian_promoters_are_cpg_rich_and_shuffles_keep_their_composition():
    data = generate(task="promoter", species="human", n=800, seed=6)
    by_origin = {o: [r.sequence for r, x in zip(data.records, data.origins, strict=True) if x == o]
                 for o in ("promoter", "shuffled", "background")}

    assert gc_of(by_origin["promoter"]) > gc_of(by_origin["background"]) + 0.1
    assert gc_of(by_origin["shuffled"]) == pytest.approx(gc_of(by_origin["promoter"]), abs=0.02)


# --- determinism, labels and the oracle ----------------------------------------------------------
@pytest.mark.parametrize("task", ["promoter", "splice", "coding", "enhancer"])
def test_same_seed_same_records_and_other_seed_other_records(task):
    first = generate(task=task, species="mouse", n=40, seed=7)
    again = generate(task=task, species="mouse", n=40, seed=7)
    other = generate(task=task, species="mouse", n=40, seed=8)

    assert [r.sequence for r in first.records] == [r.sequence for r in again.records]
    assert [str(r.label) for r in first.records] == [str(r.label) for r in again.records]
    assert [r.sequence for r in first.records] != [r.sequence for r in other.records]


@pytest.mark.parametrize("task", ["promoter", "splice", "coding", "enhancer"])
def test_records_load_into_the_dataset(task):
    data = generate(task=task, species="human", n=20, seed=9, length=240)

    dataset = GenomicDataset(data.records, task=task)

    assert len(dataset) == 20
    assert all(len(r.sequence) == 240 for r in data.records)
    assert {r.species for r in data.records} == {"human"}


def test_label_noise_matches_the_oracle():
    data = generate(task="enhancer", species="human", n=2000, seed=10, difficulty=0.5)
    labels = np.array([r.label for r in data.records])

    flipped = float((labels != data.planted).mean())

    assert flipped == pytest.approx(data.label_noise, abs=0.015)
    assert data.oracle_metrics()["accuracy"] == pytest.approx(1 - flipped)
    assert np.mean(labels) == pytest.approx(0.5, abs=0.05)


def test_positive_fraction_skews_the_labels():
    data = generate(task="coding", species="yeast", n=500, seed=11, positive_fraction=0.2)

    assert float(np.mean(data.planted)) == pytest.approx(0.2, abs=0.01)


def test_splice_oracle_is_a_distribution_per_base_and_ranks_sites_above_chance():
    data = generate(task="splice", species="human", n=100, seed=12)

    assert all(o.shape == (300, 3) for o in data.oracle)
    np.testing.assert_allclose(np.concatenate(data.oracle).sum(axis=1), 1.0, atol=1e-5)
    metrics = data.oracle_metrics()
    assert metrics["pwm_pr_auc_donor"] > 0.3 and metrics["pwm_pr_auc_acceptor"] > 0.3


def test_difficulty_moves_label_noise_and_oracle():
    easy = generate(task="promoter", species="human", n=600, seed=13, difficulty=0.0)
    hard = generate(task="promoter", species="human", n=600, seed=13, difficulty=1.0)

    assert easy.label_noise == 0.0 and easy.oracle_metrics()["accuracy"] == 1.0
    assert hard.oracle_metrics()["accuracy"] < 0.95


@pytest.mark.parametrize(("arguments", "message"), [
    ({"task": "promoter", "species": "zebrafish"}, "unknown species 'zebrafish'"),
    ({"task": "splice", "species": "e_coli"}, "no 'splice' data"),
    ({"task": "enhancer", "species": "yeast"}, "no 'enhancer' data"),
    ({"task": "folding", "species": "human"}, "unknown task 'folding'"),
    ({"task": "promoter", "species": "human", "length": 100}, "at least 170 bases"),
    ({"task": "promoter", "species": "human", "difficulty": 1.5}, "difficulty"),
    ({"task": "promoter", "species": "human", "n": 0}, "n: expected a positive integer"),
    ({"task": "promoter", "species": "human", "seed": -1}, "seed"),
    ({"task": "coding", "species": "human", "positive_fraction": 2.0}, "positive_fraction"),
])
def test_impossible_requests_are_clear_errors(arguments, message):
    with pytest.raises(SyntheticError, match=message):
        generate(**{"n": 10, "seed": 0, **arguments})


def test_species_aliases_resolve_to_one_name():
    data = generate(task="coding", species="d_melanogaster", n=5, seed=0)

    assert {r.species for r in data.records} == {"fruit_fly"}


# --- variant pairs ------------------------------------------------------------------------------
def test_variant_effects_have_the_planted_sign():
    pairs = generate_variant_pairs(species="human", n=300, seed=14)
    by_kind = {k: [p.effect for p in pairs if p.kind == k] for k in {p.kind for p in pairs}}

    assert all(p.ref != p.alt for p in pairs)
    assert max(by_kind["snv_destroy"]) < 0 < min(by_kind["snv_create"])
    assert set(by_kind["snv_neutral"]) == {0.0}
    assert all(len(p.alt) < len(p.ref) for p in pairs if p.kind == "deletion")
    assert all(len(p.alt) > len(p.ref) for p in pairs if p.kind == "insertion")
    assert {p.task for p in pairs} == {"promoter", "enhancer", "splice"}
    assert all(p.motif in MOTIFS for p in pairs)


def test_variant_pairs_are_deterministic_and_check_their_arguments():
    first = generate_variant_pairs(species="e_coli", n=20, seed=15)

    assert first == generate_variant_pairs(species="e_coli", n=20, seed=15)
    assert {p.task for p in first} == {"promoter"}
    with pytest.raises(SyntheticError, match="no 'splice' data"):
        generate_variant_pairs(species="e_coli", n=5, seed=0, tasks=("splice",))
    with pytest.raises(SyntheticError, match="no planted motifs"):
        generate_variant_pairs(species="human", n=5, seed=0, tasks=("coding",))


# --- k-mer baseline: above chance, below perfect ------------------------------------------------
def kmer_features(sequences: list[str], k_max: int = 4) -> np.ndarray:
    """Frequencies of every k-mer, k = 1 .. k_max (340 features for k_max = 4)."""
    codes = np.stack([to_codes(s) for s in sequences]).astype(np.int64)
    n, length = codes.shape
    blocks = []
    for k in range(1, k_max + 1):
        index = np.zeros((n, length - k + 1), dtype=np.int64)
        for j in range(k):
            index = index * 4 + codes[:, j : length - k + 1 + j]
        counts = np.zeros((n, 4**k))
        np.add.at(counts, (np.repeat(np.arange(n), length - k + 1), index.ravel()), 1.0)
        blocks.append(counts / (length - k + 1))
    return np.hstack(blocks)


def splice_candidate_features(records, upstream: int = 25, downstream: int = 8):
    """One-hot window around every base that could be a donor (GT next) or an acceptor (AG end)."""
    codes = np.stack([to_codes(r.sequence) for r in records]).astype(np.int64)
    labels = np.stack([r.label for r in records])
    padded = np.pad(codes, ((0, 0), (upstream, downstream)), constant_values=4)
    windows = np.lib.stride_tricks.sliding_window_view(padded, upstream + downstream + 1, axis=1)
    following = np.pad(codes, ((0, 0), (0, 2)), constant_values=4)
    preceding = np.pad(codes, ((0, 0), (1, 0)), constant_values=4)
    candidate = ((following[:, 1:-1] == 2) & (following[:, 2:] == 3)) | ((preceding[:, :-1] == 0) & (codes == 2))
    one_hot = np.eye(5)[windows[candidate]][..., :4]
    return one_hot.reshape(one_hot.shape[0], -1), labels[candidate]


SEQUENCE_COMBOS = [(s, t) for s, p in SPECIES.items() for t in p.tasks if t != "splice"]


@pytest.mark.parametrize(("species", "task"), SEQUENCE_COMBOS)
def test_kmer_baseline_is_above_chance_and_below_perfect(species, task):
    train = generate(task=task, species=species, n=1200, seed=20)
    test = generate(task=task, species=species, n=600, seed=21)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))

    with threadpool_limits(limits=1):  # small fits: BLAS threads only contend on a shared CPU
        model.fit(kmer_features([r.sequence for r in train.records]), [r.label for r in train.records])
        accuracy = model.score(kmer_features([r.sequence for r in test.records]), test.planted)

    assert 0.58 < accuracy < 0.9, f"{species} {task}: k-mer accuracy {accuracy:.3f}"


@pytest.mark.parametrize("species", SPLICE_SPECIES)
def test_splice_window_baseline_is_above_chance_and_below_perfect(species):
    x_train, y_train = splice_candidate_features(generate(task="splice", species=species, n=200, seed=22).records)
    x_test, y_test = splice_candidate_features(generate(task="splice", species=species, n=100, seed=23).records)

    with threadpool_limits(limits=1):
        scores = LogisticRegression(C=0.1, max_iter=1000).fit(x_train, y_train).predict_proba(x_test)

    for label in (1, 2):
        prevalence = float((y_test == label).mean())
        precision = average_precision_score(y_test == label, scores[:, label])
        assert 5 * prevalence < precision < 0.95, f"{species} class {label}: PR-AUC {precision:.3f}"


# --- the federation writer ----------------------------------------------------------------------
FEDERATION = [
    {"name": "hospital-a", "species": "human", "tasks": ["promoter", "splice", "enhancer"]},
    {"name": "fly-lab", "species": "d_melanogaster", "tasks": ["coding", "splice"], "size": 0.5},
    {"name": "ecoli-lab", "species": "e_coli", "tasks": ["promoter", "coding"], "positive_fraction": 0.3},
]
WRITE_ARGS = {"seed": 5, "n_per_task": 60, "central_n": 20, "progress": False}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("federation")
    return out, write_federation_data(institutions=FEDERATION, out_dir=out, **WRITE_ARGS)


def test_federation_layout_and_manifest(federation):
    out, manifest = federation

    assert manifest == yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["species"] == ["human", "fruit_fly", "e_coli"]
    assert manifest["tasks"] == ["promoter", "splice", "coding", "enhancer"]
    for institution in manifest["institutions"]:
        for task, counts in institution["counts"].items():
            for split, count in counts.items():
                rows = _rows(out / institution["name"] / task / f"{split}.tsv")
                assert len(rows) == count > 0
                assert {r["species"] for r in rows} == {institution["species"]}
    assert manifest["central"]["splice"]["species"] == ["human", "fruit_fly"]
    assert manifest["central"]["enhancer"]["species"] == ["human", "fruit_fly"]


def test_tsv_columns_and_splice_labels(federation):
    out, _ = federation
    promoter = _rows(out / "hospital-a" / "promoter" / "train.tsv")
    splice = _rows(out / "central" / "splice" / "test.tsv")
    variants = _rows(out / "variants.tsv")

    assert list(promoter[0]) == ["id", "species", "sequence", "label"]
    assert {r["label"] for r in promoter} == {"0", "1"}
    assert list(splice[0]) == ["id", "species", "sequence", "labels"]
    assert all(len(r["labels"]) == len(r["sequence"]) and set(r["labels"]) <= set("012") for r in splice)
    assert {r["species"] for r in splice} == {"human", "fruit_fly"}
    assert list(variants[0])[:6] == ["id", "species", "ref", "alt", "motif", "effect"]
    assert len({r["id"] for r in variants}) == len(variants) > 0


def test_same_seed_writes_the_same_bytes_in_another_process(federation, tmp_path):
    out, _ = federation
    script = ("import sys; from common.synthetic.federation import write_federation_data; "
              f"write_federation_data(institutions={FEDERATION!r}, out_dir=sys.argv[1], **{WRITE_ARGS!r})")
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}  # another hash order must not matter

    subprocess.run([sys.executable, "-c", script, str(tmp_path / "again")], check=True, cwd=REPO, env=environment)

    assert _tree(tmp_path / "again") == _tree(out)


def test_rewriting_into_our_own_directory_is_allowed_and_identical(federation, tmp_path):
    out, _ = federation
    before = _tree(out)

    write_federation_data(institutions=FEDERATION, out_dir=out, **WRITE_ARGS)

    assert _tree(out) == before


def test_a_foreign_directory_is_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(DataError, match="holds no manifest.yaml"):
        write_federation_data(institutions=FEDERATION, out_dir=tmp_path, **WRITE_ARGS)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(("institutions", "message"), [
    ([{"name": "lab", "species": "e_coli", "tasks": ["splice"]}], "no 'splice' data"),
    ([{"name": "lab", "species": "human", "tasks": ["coding"], "budget": 1}], r"unknown keys \['budget'\]"),
    ([{"name": "lab", "species": "human"}], r"missing keys \['tasks'\]"),
    ([{"name": "a/b", "species": "human", "tasks": ["coding"]}], "institution name 'a/b'"),
    ([{"name": "central", "species": "human", "tasks": ["coding"]}], "institution name 'central'"),
    ([{"name": "lab", "species": "human", "tasks": "coding"}], "tasks: expected a non-empty list"),
    ([{"name": "lab", "species": "human", "tasks": ["coding"], "size": 0}], "size"),
    ([{"name": "lab", "species": "human", "tasks": ["coding"]}] * 2, "duplicate names"),
    ([], "at least one institution"),
])
def test_bad_institutions_are_clear_errors(institutions, message, tmp_path):
    with pytest.raises(DataError, match=message):
        write_federation_data(institutions=institutions, out_dir=tmp_path / "out", **WRITE_ARGS)
    assert not (tmp_path / "out").exists()


def test_config_objects_are_read_by_attribute():
    class InstitutionConfig:  # the shape of common.config.InstitutionConfig: extra fields are not ours
        name, species, tasks, size, device = "lab", "yeast", ("coding",), 2.0, "cpu"

    spec = InstitutionSpec.from_value(InstitutionConfig())

    assert spec == InstitutionSpec(name="lab", species="yeast", tasks=("coding",), size=2.0)
    with pytest.raises(DataError, match=r"has no attribute\(s\) \['name', 'species', 'tasks'\]"):
        InstitutionSpec.from_value(42)


def test_bad_writer_arguments_are_clear_errors(tmp_path):
    specs = [InstitutionSpec(name="lab", species="human", tasks=("coding",))]
    with pytest.raises(DataError, match="n_per_task"):
        write_federation_data(institutions=specs, out_dir=tmp_path, seed=0, n_per_task=0, central_n=5)
    with pytest.raises(DataError, match="lengths: unknown tasks"):
        write_federation_data(institutions=specs, out_dir=tmp_path, seed=0, n_per_task=5, central_n=5,
                              lengths={"folding": 100})
    with pytest.raises(DataError, match="difficulty"):
        write_federation_data(institutions=specs, out_dir=tmp_path, seed=0, n_per_task=5, central_n=5,
                              difficulty=2.0)
    with pytest.raises(DataError, match="split_fractions"):
        write_federation_data(institutions=specs, out_dir=tmp_path, seed=0, n_per_task=5, central_n=5,
                              split_fractions=(0.5, 0.5))
    with pytest.raises(DataError, match="variants_per_species"):
        write_federation_data(institutions=specs, out_dir=tmp_path, seed=0, n_per_task=5, central_n=5,
                              variants_per_species=-1)
    with pytest.raises(DataError, match="lengths.coding: .* at least 90 bases, got 30"):
        write_federation_data(institutions=specs, out_dir=tmp_path / "out", seed=0, n_per_task=5, central_n=5,
                              lengths={"coding": 30}, progress=False)
    assert not (tmp_path / "out").exists()
