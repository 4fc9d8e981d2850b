"""An institution joins with the files it has: data sources in its YAML, splits, `data check/import`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from client.agent import InstitutionAgent
from common.cli import main as helixfed
from common.config import ConfigError, load_institution
from common.data.dataset import DataError
from common.data.importing import SplitConfig, SplitError, institution_splits
from common.data.negatives import dinucleotide_shuffle
from common.data.readers_common import DuplicateIdError, IntervalError, LabelError, reverse_complement
from common.data.sources import TaskSource

RNG = np.random.default_rng(3)


def random_dna(n: int, rng=RNG) -> str:
    return "".join(rng.choice(list("ACGT"), size=n))


def write_fasta(path: Path, entries: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{name} free text\n{seq[:50]}\n{seq[50:]}\n" for name, seq in entries))
    return path


def write_institution(directory: Path, data: dict, *, tasks=None, split=None, **extra) -> Path:
    config = {"name": "lab-own", "species": "human", "tasks": tasks or list(data), "data": data,
              "state_dir": "state", "privacy": {"epsilon": 8.0, "delta": 1e-5, "planned_rounds": 2}, **extra}
    if split is not None:
        config["split"] = split
    path = directory / "institution.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def splits_of(path: Path) -> dict:
    config = load_institution(path)
    return institution_splits(config.data, config.split, species=config.species)


# ---------------------------------------------------------------- whole-file labels


def test_fasta_files_with_whole_file_labels_split_stratified(tmp_path):
    write_fasta(tmp_path / "peaks.fa", [(f"peak{i}", random_dna(80)) for i in range(60)])
    write_fasta(tmp_path / "background.fa", [(f"bg{i}", random_dna(80)) for i in range(140)])
    path = write_institution(tmp_path, {"enhancer": {"positives": ["peaks.fa"], "negatives": ["background.fa"]}},
                             split={"val": 0.1, "test": 0.2, "seed": 1})

    splits = splits_of(path)["enhancer"]

    assert {k: len(v) for k, v in splits.items()} == {"train": 140, "val": 20, "test": 40}
    for records in splits.values():  # stratified: every split keeps the 30 % positives
        assert sum(r.label for r in records) == pytest.approx(0.3 * len(records), abs=1)
    ids = {r.id: r.label for part in splits.values() for r in part}
    assert ids["peak0"] == 1 and ids["bg0"] == 0 and len(ids) == 200


def test_an_id_in_both_files_is_an_error_naming_both_places(tmp_path):
    write_fasta(tmp_path / "pos.fa", [("same", random_dna(60))])
    write_fasta(tmp_path / "neg.fa", [("other", random_dna(60)), ("same", random_dna(60))])
    path = write_institution(tmp_path, {"enhancer": {"positives": ["pos.fa"], "negatives": ["neg.fa"]}})

    with pytest.raises(DuplicateIdError, match=r"neg\.fa, line 4: id .same. already used at .*pos\.fa, line 1"):
        splits_of(path)


def test_shuffled_negatives_keep_dinucleotides_and_a_three_class_task_needs_classes(tmp_path):
    write_fasta(tmp_path / "pos.fa", [(f"p{i}", random_dna(70)) for i in range(30)])
    path = write_institution(tmp_path, {"promoter": {"positives": ["pos.fa"],
                                                     "negatives": {"shuffle": "dinucleotide", "per_positive": 2}}})

    records = [r for part in splits_of(path)["promoter"].values() for r in part]
    by_id = {r.id: r for r in records}

    assert Counter(r.label for r in records) == {1: 30, 0: 60}
    original, shuffled = by_id["p3"].sequence, by_id["shuffled:p3:1"].sequence
    assert shuffled != original
    assert Counter(zip(original, original[1:], strict=False)) == Counter(zip(shuffled, shuffled[1:], strict=False))


@pytest.mark.parametrize("length", [3, 4, 17, 200])
def test_dinucleotide_shuffle_is_a_permutation_with_the_same_pairs(length):
    rng = np.random.default_rng(length)
    sequence = random_dna(length, rng)
    for _ in range(20):
        out = dinucleotide_shuffle(sequence, rng)
        assert (out[0], out[-1], sorted(out)) == (sequence[0], sequence[-1], sorted(sequence))
        assert Counter(zip(out, out[1:], strict=False)) == Counter(zip(sequence, sequence[1:], strict=False))


# ---------------------------------------------------------------- BED + reference


@pytest.fixture
def genome(tmp_path) -> dict[str, str]:
    contigs = {"chr1": random_dna(3000), "chr2": random_dna(2000), "chrM": random_dna(150)}
    with (tmp_path / "genome.fa").open("w") as handle:
        for name, seq in contigs.items():
            handle.write(f">{name}\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60)))
    return contigs


def test_bed_windows_are_strand_aware_and_shift_inside_contig_ends(tmp_path, genome):
    (tmp_path / "peaks.bed").write_text("track name=peaks\n"
                                        "chr1\t1000\t1040\tpk1\t0\t+\n"
                                        "chr1\t10\t30\tpk2\t0\t-\n"         # window would start before 0
                                        "chr2\t1980\t2000\tpk3\t5\t.\n")    # ... and run past the end
    path = write_institution(tmp_path, {"enhancer": {"bed": "peaks.bed", "reference": "genome.fa", "window": 100,
                                                     "negatives": {"flanks": 300}}},
                             split={"val": 0.0, "test": 0.3})

    records = {r.id: r for part in splits_of(path)["enhancer"].values() for r in part}

    assert records["chr1:970-1070(+)"].sequence == genome["chr1"][970:1070]
    assert records["chr1:0-100(-)"].sequence == reverse_complement(genome["chr1"][0:100])
    assert records["chr2:1900-2000"].sequence == genome["chr2"][1900:2000]
    assert [records[i].label for i in ("chr1:970-1070(+)", "chr1:0-100(-)", "chr2:1900-2000")] == [1, 1, 1]
    flanks = sorted(i for i, r in records.items() if r.label == 0)
    # 300 bp beyond each 100-bp window, on the contig: 570-670 and 1370-1470 on chr1, 400-500 on chr1
    # after pk2, 1500-1600 on chr2 (the window past chr2's end is dropped).
    assert flanks == sorted(["chr1:570-670(+)", "chr1:1370-1470(+)", "chr1:400-500(+)", "chr2:1500-1600(+)"])


def test_bed_errors_name_file_and_line(tmp_path, genome):
    (tmp_path / "bad.bed").write_text("chr1\t10\t90\n\nchr9\t5\t50\n")
    path = write_institution(tmp_path, {"enhancer": {"bed": "bad.bed", "reference": "genome.fa",
                                                     "negatives": {"shuffle": "dinucleotide"}}})
    with pytest.raises(IntervalError, match=r"bad\.bed, line 3: chromosome 'chr9' is not in reference"):
        splits_of(path)

    (tmp_path / "bad.bed").write_text("chrM\t10\t90\n")
    path = write_institution(tmp_path, {"enhancer": {"bed": "bad.bed", "reference": "genome.fa", "window": 500,
                                                     "negatives": {"shuffle": "dinucleotide"}}})
    with pytest.raises(IntervalError, match=r"bad\.bed, line 1: chrM is 150 bases long .* shorter than window 500"):
        splits_of(path)


def test_split_by_chromosome_never_shares_a_chromosome(tmp_path):
    rng = np.random.default_rng(0)
    entries = [(f"chr{c}:{i * 100}-{i * 100 + 80}", random_dna(80, rng)) for c in range(1, 7) for i in range(25)]
    write_fasta(tmp_path / "pos.fa", entries[::2])
    write_fasta(tmp_path / "neg.fa", entries[1::2])
    path = write_institution(tmp_path, {"enhancer": {"positives": ["pos.fa"], "negatives": ["neg.fa"]}},
                             split={"by": "chromosome", "val": 0.15, "test": 0.15, "seed": 4})

    splits = splits_of(path)["enhancer"]

    chromosomes = {name: {r.id.split(":")[0] for r in records} for name, records in splits.items()}
    assert all(chromosomes.values())
    assert not (chromosomes["train"] & chromosomes["val"] or chromosomes["train"] & chromosomes["test"]
                or chromosomes["val"] & chromosomes["test"])
    assert sum(len(v) for v in splits.values()) == 150


def test_split_by_chromosome_without_coordinates_is_a_clear_error(tmp_path):
    write_fasta(tmp_path / "pos.fa", [(f"p{i}", random_dna(60)) for i in range(20)])
    path = write_institution(tmp_path, {"enhancer": {"positives": ["pos.fa"], "negatives": {"shuffle": "dinucleotide"}}},
                             split={"by": "chromosome"})
    with pytest.raises(SplitError, match=r"data\.enhancer: split.by chromosome needs the chromosome .* 'p0'"):
        splits_of(path)


# ---------------------------------------------------------------- folders that come split


def test_gue_and_genomic_benchmarks_folders_keep_their_splits(tmp_path):
    gue = tmp_path / "gue" / "coding"
    gue.mkdir(parents=True)
    for name, n in (("train", 40), ("dev", 6), ("test", 8)):
        (gue / f"{name}.csv").write_text("sequence,label\n" + "".join(f"{random_dna(50)},{i % 2}\n" for i in range(n)))
    bench = tmp_path / "human_enhancers_cohn"
    for split, n in (("train", 30), ("test", 10)):
        for cls in ("positive", "negative"):
            folder = bench / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.txt").write_text(random_dna(60) + "\n")
    path = write_institution(tmp_path, {"coding": {"gue": "gue/coding"},
                                        "enhancer": {"genomic_benchmarks": "human_enhancers_cohn"}})

    splits = splits_of(path)

    assert {k: len(v) for k, v in splits["coding"].items()} == {"train": 40, "val": 6, "test": 8}
    enhancer = splits["enhancer"]
    assert len(enhancer["test"]) == 20 and len(enhancer["train"]) + len(enhancer["val"]) == 60
    assert len(enhancer["val"]) > 0
    assert Counter(r.label for r in enhancer["test"]) == {0: 10, 1: 10}


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("source, message", [
    ({"positives": ["a.fa"], "table": "t.tsv"}, "exactly one of"),
    ({"positives": ["a.fa"]}, "positives need negatives"),
    ({"bed": "x.bed"}, "bed and reference go together"),
    ({"table": "t.tsv", "window": 100}, "window and label apply to a bed source"),
    ({"bed": "x.bed", "reference": "g.fa", "negatives": {"shuffle": "dinucleotide", "flanks": 10}},
     "exactly one of shuffle, flanks or bed"),
])
def test_bad_sources_are_config_errors_naming_the_key(tmp_path, source, message):
    path = write_institution(tmp_path, {"enhancer": source})
    with pytest.raises(ConfigError, match=rf"institution\.yaml.*data\.enhancer.*{message}"):
        load_institution(path)


def test_sources_resolve_against_the_institution_file_and_cover_every_task(tmp_path):
    path = write_institution(tmp_path, {"enhancer": {"table": "sets/e.tsv"}})
    assert load_institution(path).data["enhancer"].table == (tmp_path / "sets" / "e.tsv").resolve()

    path = write_institution(tmp_path, {"enhancer": {"table": "e.tsv"}}, tasks=["enhancer", "promoter"])
    with pytest.raises(ConfigError, match="every task needs exactly one source"):
        load_institution(path)
    path = write_institution(tmp_path, {"enhancer": {"table": "e.tsv"}}, data_dir="somewhere")
    with pytest.raises(ConfigError, match="not both"):
        load_institution(path)


def test_per_base_tasks_need_a_table(tmp_path):
    source = TaskSource(positives=(tmp_path / "a.fa",), negatives={"shuffle": "dinucleotide"})
    from common.data.sources import read_source
    from common.tasks import get_task
    with pytest.raises(LabelError, match="per-base labels"):
        read_source(source, get_task("splice"), species="human", seed=0)
    assert SplitConfig().by == "random"


# ---------------------------------------------------------------- commands and the agent


@pytest.fixture
def own_files(tmp_path) -> Path:
    rng = np.random.default_rng(5)
    motif = "TTGACAGGTATAAT"
    pos = [(f"chr{1 + i % 4}:{i * 200}-{i * 200 + 100}", random_dna(40, rng) + motif + random_dna(46, rng))
           for i in range(80)]
    write_fasta(tmp_path / "peaks.fa", pos)
    return write_institution(tmp_path, {"promoter": {"positives": ["peaks.fa"],
                                                     "negatives": {"shuffle": "dinucleotide"}}},
                             split={"by": "chromosome", "val": 0.2, "test": 0.2})


def test_data_check_summarises_and_writes_nothing(own_files, capsys):
    before = sorted(p.name for p in own_files.parent.iterdir())

    assert helixfed(["data", "check", "--institution", str(own_files)]) == 0
    assert helixfed(["train", "--dry-run", "--institution", str(own_files)]) == 0

    out = capsys.readouterr().out
    assert "what would be trained on" in out and "no privacy budget spent" in out
    assert "delta 1e-05 < 1/" in out and "holds" in out
    assert sorted(p.name for p in own_files.parent.iterdir()) == before  # no ledger, no state, no output


def test_data_import_writes_a_layout_the_agent_reads_back(own_files, tmp_path):
    out = tmp_path / "imported"

    assert helixfed(["data", "import", "--institution", str(own_files), "--out", str(out)]) == 0

    summary = json.loads((out / "manifest.json").read_text())
    promoter = summary["tasks"]["promoter"]
    assert sum(promoter[s]["records"] for s in ("train", "val", "test")) == 160
    assert promoter["test"]["also_in_train"] == 0 and 0.3 < promoter["train"]["gc"] < 0.7
    assert summary["delta_ok"] is True
    config = yaml.safe_load(own_files.read_text())
    del config["data"], config["split"]
    config["data_dir"] = str(out)
    (tmp_path / "from_tsv.yaml").write_text(yaml.safe_dump(config))
    agent_tsv = InstitutionAgent(load_institution(tmp_path / "from_tsv.yaml"))
    agent_own = InstitutionAgent(load_institution(own_files))
    for split in ("train", "val", "test"):
        assert agent_tsv.data(split)["promoter"].sequences == agent_own.data(split)["promoter"].sequences


def test_data_check_fails_when_delta_is_not_below_one_over_records(tmp_path, capsys):
    write_fasta(tmp_path / "pos.fa", [(f"p{i}", random_dna(60)) for i in range(20)])
    path = write_institution(tmp_path, {"enhancer": {"positives": ["pos.fa"], "negatives": {"shuffle": "dinucleotide"}}})
    config = yaml.safe_load(path.read_text())
    config["privacy"]["delta"] = 0.1
    path.write_text(yaml.safe_dump(config))

    assert helixfed(["data", "check", "--institution", str(path)]) == 2
    assert "does not hold" in capsys.readouterr().out


def test_a_broken_source_fails_the_command_naming_file_and_line(tmp_path, capsys):
    (tmp_path / "pos.fa").write_text(">a\nACGTXACGT\n")
    path = write_institution(tmp_path, {"enhancer": {"positives": ["pos.fa"], "negatives": {"shuffle": "dinucleotide"}}})

    assert helixfed(["data", "check", "--institution", str(path)]) == 1
    out = capsys.readouterr().out  # rich wraps at the terminal's width: at a space, or inside a long path
    assert "pos.fa,line2" in "".join(out.split())
    with pytest.raises(DataError):
        splits_of(path)


def test_classes_and_bed_labels_are_given_by_name_or_index(tmp_path, genome):
    write_fasta(tmp_path / "a.fa", [(f"a{i}", random_dna(60)) for i in range(10)])
    write_fasta(tmp_path / "b.fa", [(f"b{i}", random_dna(60)) for i in range(10)])
    path = write_institution(tmp_path, {"enhancer": {"classes": {"non-enhancer": ["a.fa"], "1": ["b.fa"]}}})
    records = [r for part in splits_of(path)["enhancer"].values() for r in part]
    assert {r.id[0]: r.label for r in records} == {"a": 0, "b": 1}

    (tmp_path / "bg.bed").write_text("chr1\t100\t200\nchr2\t300\t400\n")
    path = write_institution(tmp_path, {"enhancer": {"bed": "bg.bed", "reference": "genome.fa",
                                                     "label": "enhancer", "negatives": ["a.fa"]}})
    records = [r for part in splits_of(path)["enhancer"].values() for r in part]
    assert Counter(r.label for r in records) == {0: 10, 1: 2}
    assert {r.id for r in records if r.label == 1} == {"chr1:100-200", "chr2:300-400"}
    with pytest.raises(LabelError, match="'silencer' is not an integer"):
        write_institution(tmp_path, {"enhancer": {"bed": "bg.bed", "reference": "genome.fa", "label": "silencer",
                                                  "negatives": ["b.fa"]}})
        splits_of(tmp_path / "institution.yaml")
