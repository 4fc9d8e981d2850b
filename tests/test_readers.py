"""Readers and writers: format detection, round trips through every format, and one test per way a
file can be wrong, each checking that the error names the file, the line and the fault."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.dataset import DataError, GenomicDataset, Record
from common.data.readers import (
    BadSequenceError,
    CompressedFileError,
    DuplicateIdError,
    EmptyFileError,
    FastaFormatError,
    HeaderError,
    IntervalError,
    LabelError,
    MissingFileError,
    ReaderError,
    RowError,
    UnknownChromosomeError,
    UnknownFormatError,
    detect_format,
    load_dataset,
    read_records,
)
from common.data.writers import (
    write_bed,
    write_fasta,
    write_genomic_benchmarks,
    write_label_file,
    write_split_tables,
    write_table,
)
from common.tokenizer import SequenceError

SEQUENCE_RECORDS = [
    Record("r1", "ACGTACGTTTGACCA" * 9, 1, "human"),  # 135 bases: wraps over several FASTA lines
    Record("r2", "ggccNNatRYacgu", 0, "mouse"),  # soft-masked, N, IUPAC, U
    Record("r3", "TTTT", 1, None),
]
SPLICE_RECORDS = [
    Record("s1", "AAGGTAAGTC", np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), "human"),
    Record("s2", "TTTCAGGA", np.array([0, 0, 0, 0, 0, 2, 0, 0]), None),
]


def at(path: Path, line: int) -> str:
    """Regex for the location every reader error starts with."""
    return re.escape(f"{path}, line {line}")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_same(read: list[Record], expected: list[Record], *, species: str | None = None) -> None:
    assert [r.id for r in read] == [r.id for r in expected]
    assert [r.sequence for r in read] == [r.sequence for r in expected]
    assert [r.species for r in read] == [r.species or species for r in expected]
    for got, want in zip(read, expected, strict=True):
        np.testing.assert_array_equal(got.label, want.label)


# --- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["data.fa", "data.fasta.gz", "data.fna"])
def test_fasta_header_labels_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_fasta(SEQUENCE_RECORDS, path, line_width=50)

    read = read_records(path, task="promoter", species="zebrafish")

    assert_same(read, SEQUENCE_RECORDS, species="zebrafish")


def test_fasta_with_label_file_round_trip_for_splice(tmp_path: Path) -> None:
    fasta, labels = tmp_path / "splice.fa", tmp_path / "splice_labels.tsv"
    write_fasta(SPLICE_RECORDS, fasta, line_width=4, labels_in_header=False)
    write_label_file(SPLICE_RECORDS, labels)

    read = read_records(fasta, task="splice", label_file=labels)

    assert_same(read, SPLICE_RECORDS)


def test_fasta_with_label_file_round_trip_for_sequence_task(tmp_path: Path) -> None:
    fasta, labels = tmp_path / "plain.fa", tmp_path / "labels.tsv.gz"
    write_fasta(SEQUENCE_RECORDS, fasta, labels_in_header=False)
    write_label_file(SEQUENCE_RECORDS, labels)

    assert_same(read_records(fasta, task="enhancer", label_file=labels), SEQUENCE_RECORDS)


@pytest.mark.parametrize("name", ["table.csv", "table.tsv", "table.tsv.gz"])
def test_table_round_trip(tmp_path: Path, name: str) -> None:
    write_table(SEQUENCE_RECORDS, tmp_path / name)

    assert_same(read_records(tmp_path / name, task="coding"), SEQUENCE_RECORDS)


def test_splice_table_round_trip(tmp_path: Path) -> None:
    write_table(SPLICE_RECORDS, tmp_path / "splice.tsv")

    assert_same(read_records(tmp_path / "splice.tsv", task="splice"), SPLICE_RECORDS)


def test_generated_layout_round_trip_by_split(tmp_path: Path) -> None:
    splits = {"train": SEQUENCE_RECORDS, "val": SEQUENCE_RECORDS[:1], "test": SEQUENCE_RECORDS[1:]}
    write_split_tables(tmp_path / "gen", splits)

    for split, records in splits.items():
        assert_same(read_records(tmp_path / "gen", task="promoter", split=split), records)


def test_gue_layout_defaults_ids_to_file_and_line_and_dev_is_val(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "sequence,label\nACGT,1\n\nGGCC,0\n")
    write(tmp_path / "dev.csv", "sequence,label\nTTAA,0\n")

    train = read_records(tmp_path, task="promoter", split="train", species="human")
    val = read_records(tmp_path, task="promoter", split="val")

    assert [r.id for r in train] == ["train.csv:2", "train.csv:4"]
    assert [r.label for r in train] == [1, 0] and train[0].species == "human"
    assert [r.sequence for r in val] == ["TTAA"]


def test_spreadsheet_csv_with_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "sheet.csv"
    path.write_bytes("\ufeffSequence , Label,notes\r\nACGT,1,kept out\r\n".encode())

    read = read_records(path, task="promoter")

    assert [(r.id, r.sequence, r.label) for r in read] == [("sheet.csv:2", "ACGT", 1)]


def test_genomic_benchmarks_round_trip(tmp_path: Path) -> None:
    write_genomic_benchmarks(tmp_path / "gb", {"train": SEQUENCE_RECORDS, "test": SEQUENCE_RECORDS[:2]},
                             class_names=("negative", "positive"))

    read = read_records(tmp_path / "gb", task="enhancer", split="train", species="human")

    by_id = {r.id: r for r in read}
    assert sorted(by_id) == ["negative/r2", "positive/r1", "positive/r3"]
    for original in SEQUENCE_RECORDS:
        got = by_id[f"{'positive' if original.label else 'negative'}/{original.id}"]
        assert (got.sequence, got.label, got.species) == (original.sequence, original.label, "human")


def test_bed_round_trip_on_both_strands(tmp_path: Path) -> None:
    bed, reference = tmp_path / "peaks.bed", tmp_path / "genome.fa"
    write_bed(SEQUENCE_RECORDS, bed_path=bed, reference_path=reference, strands=["-", "+", "."])

    assert_same(read_records(bed, task="enhancer", reference=reference), SEQUENCE_RECORDS)


def test_bed_splice_labels_follow_the_returned_strand(tmp_path: Path) -> None:
    bed, reference, labels = tmp_path / "sites.bed.gz", tmp_path / "genome.fa", tmp_path / "labels.tsv"
    write_bed(SPLICE_RECORDS, bed_path=bed, reference_path=reference, strands=["-", "+"],
              names_with_labels=False)
    write_label_file(SPLICE_RECORDS, labels)

    read = read_records(bed, task="splice", reference=reference, label_file=labels)

    assert_same(read, SPLICE_RECORDS)
    assert "CTTACC" in reference.read_text()  # s1 is stored reverse complemented


def test_bed_reads_hand_written_half_open_intervals(tmp_path: Path) -> None:
    reference = write(tmp_path / "ref.fa", ">chrA\nAACCGGTT\nAAAC\n>chrB\nGATTACA\n")
    bed = write(tmp_path / "x.bed", "track name=x\n# comment\nchrA\t0\t3\tp|1\nchrA 6 10 q|0|yeast 0 -\n"
                                    "chrB\t6\t7\tr|1\t.\t+\n")

    read = read_records(bed, task="promoter", reference=reference)

    assert [(r.id, r.sequence, r.label, r.species) for r in read] == [
        ("p", "AAC", 1, None), ("q", "TTAA", 0, "yeast"), ("r", "A", 1, None)]


def test_load_dataset_tokenises_and_names_its_source(tmp_path: Path) -> None:
    write_table(SPLICE_RECORDS, tmp_path / "train.tsv")

    dataset = load_dataset(tmp_path, task="splice")

    assert isinstance(dataset, GenomicDataset)
    assert dataset.source == str(tmp_path / "train.tsv")
    assert dataset.ids == ["s1", "s2"] and dataset.species == ["human", None]
    tokens, labels = dataset[1]
    assert tokens.shape == (8,) and torch.equal(labels, torch.tensor([0, 0, 0, 0, 0, 2, 0, 0]))


# --- format detection ------------------------------------------------------------------------------

def test_detect_format_by_name_and_layout(tmp_path: Path) -> None:
    write_split_tables(tmp_path / "gen", {"train": SEQUENCE_RECORDS})
    write_genomic_benchmarks(tmp_path / "gb", {"test": SEQUENCE_RECORDS}, class_names=("a", "b"))
    for name in ("x.FA", "x.fna.gz", "x.csv", "x.tsv.gz", "x.bed"):
        write(tmp_path / name, "")

    assert detect_format(tmp_path / "x.FA") == ("fasta", tmp_path / "x.FA")
    assert detect_format(tmp_path / "x.fna.gz")[0] == "fasta"
    assert detect_format(tmp_path / "x.csv")[0] == detect_format(tmp_path / "x.tsv.gz")[0] == "table"
    assert detect_format(tmp_path / "x.bed")[0] == "bed"
    assert detect_format(tmp_path / "gen") == ("table", tmp_path / "gen" / "train.tsv")
    assert detect_format(tmp_path / "gb") == ("genomic-benchmarks", tmp_path / "gb" / "test")


def test_unknown_file_type_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "reads.sam", "x")
    with pytest.raises(UnknownFormatError, match=re.escape(str(path)) + ".*expected a name ending in"):
        load_dataset(path, task="promoter")


def test_directory_without_a_known_layout_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "x")
    with pytest.raises(UnknownFormatError, match=re.escape(str(tmp_path)) + ".*GUE, generated or Genomic"):
        load_dataset(tmp_path, task="promoter")


def test_split_choice_errors(tmp_path: Path) -> None:
    write_split_tables(tmp_path, {"train": SEQUENCE_RECORDS, "test": SEQUENCE_RECORDS})

    with pytest.raises(ValueError, match="holds splits train, test; pass split="):
        load_dataset(tmp_path, task="promoter")
    with pytest.raises(MissingFileError, match=r"no split 'val'; expected one of train, test"):
        load_dataset(tmp_path, task="promoter", split="val")
    with pytest.raises(ValueError, match="applies to dataset directories"):
        load_dataset(tmp_path / "train.tsv", task="promoter", split="train")


def test_arguments_that_do_not_fit_the_format(tmp_path: Path) -> None:
    write_table(SEQUENCE_RECORDS, tmp_path / "t.tsv")
    bed = write(tmp_path / "x.bed", "chr1\t0\t1\ta|1\n")

    with pytest.raises(ValueError, match="needs reference="):
        load_dataset(bed, task="promoter")
    with pytest.raises(ValueError, match="reference= applies to BED files only"):
        load_dataset(tmp_path / "t.tsv", task="promoter", reference=bed)
    with pytest.raises(ValueError, match="label_file= is for FASTA"):
        load_dataset(tmp_path / "t.tsv", task="promoter", label_file=bed)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_dataset(tmp_path / "t.tsv", task="nope")


@pytest.mark.parametrize(("names", "task", "expected"), [
    (("negative", "positive"), "enhancer", {"negative": 0, "positive": 1}),
    (("coding_seqs", "intergenomic_seqs"), "coding", {"coding_seqs": 1, "intergenomic_seqs": 0}),
    (("promoter", "non_promoter"), "promoter", {"promoter": 1, "non_promoter": 0}),
    (("1", "0"), "promoter", {"1": 1, "0": 0}),
    (("human", "worm"), "promoter", {"human": 0, "worm": 1}),  # no rule fits: sorted order
])
def test_genomic_benchmarks_class_names_map_to_labels(tmp_path: Path, names: tuple[str, str], task: str,
                                                      expected: dict[str, int]) -> None:
    for name in names:
        (tmp_path / "train" / name).mkdir(parents=True)
        write(tmp_path / "train" / name / "0.txt", "ACGT\n")

    read = read_records(tmp_path, task=task)

    assert {r.id.split("/")[0]: r.label for r in read} == expected


def test_genomic_benchmarks_label_file_maps_classes_explicitly(tmp_path: Path) -> None:
    for name in ("human", "worm"):
        (tmp_path / "test" / name).mkdir(parents=True)
        write(tmp_path / "test" / name / "0.txt", "ACGT\nAC\n")
    mapping = write(tmp_path / "classes.tsv", "human\t1\nworm\t0\n")

    read = read_records(tmp_path, task="promoter", label_file=mapping)

    assert [(r.id, r.sequence, r.label) for r in read] == [("human/0", "ACGTAC", 1), ("worm/0", "ACGTAC", 0)]


# --- errors: each names the file, the line or record, what was wrong and what was expected ---------

def test_exception_classes_fit_the_existing_hierarchy() -> None:
    assert issubclass(ReaderError, DataError) and issubclass(ReaderError, ValueError)
    assert issubclass(BadSequenceError, SequenceError) and issubclass(BadSequenceError, ReaderError)
    assert issubclass(UnknownChromosomeError, IntervalError)
    assert issubclass(MissingFileError, FileNotFoundError)


def test_missing_file(tmp_path: Path) -> None:
    missing = re.escape(str(tmp_path / "absent.fa"))
    with pytest.raises(MissingFileError, match=missing + ": dataset file or directory not found"):
        load_dataset(tmp_path / "absent.fa", task="promoter")


def test_missing_label_file(tmp_path: Path) -> None:
    fasta = write(tmp_path / "a.fa", ">x\nACGT\n")
    missing = re.escape(str(tmp_path / "labels.tsv"))
    with pytest.raises(MissingFileError, match=missing + ": label file not found"):
        load_dataset(fasta, task="promoter", label_file=tmp_path / "labels.tsv")


@pytest.mark.parametrize("name", ["empty.fa", "empty.csv", "empty.bed"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "\n\n")
    reference = write(tmp_path / "ref.fa", ">chr1\nACGT\n")
    with pytest.raises(EmptyFileError, match=re.escape(str(path)) + ".*(no records|empty file|no intervals)"):
        load_dataset(path, task="promoter", reference=reference if name.endswith(".bed") else None)


def test_table_with_header_and_no_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "sequence,label\n")
    with pytest.raises(EmptyFileError, match=re.escape(str(path)) + ": table has a header but no rows"):
        load_dataset(path, task="promoter")


def test_missing_header(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "\nACGT,1\n")
    expected = at(path, 2) + r".*lacks column\(s\) sequence, label; expected a first row"
    with pytest.raises(HeaderError, match=expected):
        load_dataset(path, task="promoter")


def test_splice_table_with_sequence_label_column(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", "sequence\tlabel\nACGT\t1\n")
    expected = at(path, 1) + r".*lacks column\(s\) labels.*'label' is for sequence"
    with pytest.raises(HeaderError, match=expected):
        load_dataset(path, task="splice")


def test_duplicate_column(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "sequence,label,Label\nACGT,1,0\n")
    with pytest.raises(HeaderError, match=at(path, 1) + ".*label named twice"):
        load_dataset(path, task="promoter")


def test_unknown_base_in_multiline_fasta_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">ok|1\nACGT\n>bad|0 description\nACGTA\nCGTXA\n")
    with pytest.raises(BadSequenceError, match=at(path, 5) + r" \(record 'bad\|0'\): unknown base 'X' at "
                                                             r"sequence position 9; expected A, C, G, T"):
        load_dataset(path, task="promoter")


def test_unknown_base_in_table(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", "id\tsequence\tlabel\na\tACGT\t1\nb\tAC-GT\t0\n")
    with pytest.raises(BadSequenceError, match=at(path, 3) + r" \(record 'b'\): unknown base '-' at sequence "
                                                             r"position 3"):
        load_dataset(path, task="promoter")


def test_unknown_base_in_reference_region(tmp_path: Path) -> None:
    reference = write(tmp_path / "ref.fa", ">chr1\nACGT*CGT\n")
    bed = write(tmp_path / "x.bed", "chr1\t0\t2\ta|1\nchr1\t2\t6\tb|1\n")
    with pytest.raises(BadSequenceError, match=at(bed, 2) + r" \(record 'b'\): unknown base '\*' at sequence "
                                                            r"position 3"):
        load_dataset(bed, task="promoter", reference=reference)


def test_non_integer_label(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">x|yes\nACGT\n")
    with pytest.raises(LabelError, match=at(path, 1) + r".*label 'yes' is not an integer; expected one of "
                                                       r"0 \(non-promoter\), 1 \(promoter\)") as caught:
        load_dataset(path, task="promoter")
    assert isinstance(caught.value.__cause__, ValueError)


def test_out_of_range_label(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "sequence,label\nACGT,1\nACGT,2\n")
    with pytest.raises(LabelError, match=at(path, 3) + r" \(record 't.csv:3'\): label 2 is out of range"):
        load_dataset(path, task="coding")


def test_fasta_header_without_label(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">x\nACGT\n")
    with pytest.raises(LabelError, match=at(path, 1) + r".*carries no label; expected id\|label"):
        load_dataset(path, task="promoter")


def test_splice_label_string_of_wrong_length(tmp_path: Path) -> None:
    path = write(tmp_path / "s.tsv", "sequence\tlabels\nACGTAC\t000120\nACGT\t00100\n")
    with pytest.raises(LabelError, match=at(path, 3) + r".*5 characters for a sequence of 4 bases"):
        load_dataset(path, task="splice")


def test_splice_label_string_with_a_bad_character(tmp_path: Path) -> None:
    path = write(tmp_path / "s.tsv", "sequence\tlabels\nACGT\t0030\n")
    with pytest.raises(LabelError, match=at(path, 2) + r".*label character '3' at position 3 is not a class"):
        load_dataset(path, task="splice")


def test_splice_fasta_needs_a_label_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">x|0\nACGT\n")
    with pytest.raises(LabelError, match=re.escape(str(path)) + ".*expected label_file="):
        load_dataset(path, task="splice")


def test_label_file_lacks_an_id(tmp_path: Path) -> None:
    fasta = write(tmp_path / "a.fa", ">x\nACGT\n>y\nACGT\n")
    labels = write(tmp_path / "labels.tsv", "id\tlabels\nx\t0100\n")
    expected = at(fasta, 3) + r" \(record 'y'\): id 'y' has no row in the label file"
    with pytest.raises(LabelError, match=expected):
        load_dataset(fasta, task="splice", label_file=labels)


def test_label_file_wrong_length_names_the_label_file_line(tmp_path: Path) -> None:
    fasta = write(tmp_path / "a.fa", ">x\nACGT\n")
    labels = write(tmp_path / "labels.tsv", "# comment\nx\t010\n")
    with pytest.raises(LabelError, match=at(labels, 2) + r" \(record 'x'\): label string has 3 characters"):
        load_dataset(fasta, task="splice", label_file=labels)


def test_bed_interval_past_end_of_chromosome(tmp_path: Path) -> None:
    reference = write(tmp_path / "ref.fa", ">chr1\nACGTACGT\n")
    bed = write(tmp_path / "x.bed", "chr1\t0\t8\ta|1\nchr1\t4\t9\tb|0\n")
    with pytest.raises(IntervalError, match=at(bed, 2) + r": interval chr1:4-9 runs past the end of chr1 "
                                                         r"\(length 8 in .*ref.fa\); expected end <= 8"):
        load_dataset(bed, task="promoter", reference=reference)


def test_bed_unknown_chromosome(tmp_path: Path) -> None:
    reference = write(tmp_path / "ref.fa", ">chr1\nACGTACGT\n")
    bed = write(tmp_path / "x.bed", "chr2\t0\t4\ta|1\n")
    with pytest.raises(UnknownChromosomeError, match=at(bed, 1) + r": chromosome 'chr2' is not in reference "
                                                                  r".*expected one of its records \(chr1\)"):
        load_dataset(bed, task="promoter", reference=reference)


@pytest.mark.parametrize(("line", "message"), [
    ("chr1\t4\t4\ta|1", "end 4 is not after start 4"),
    ("chr1\t-1\t4\ta|1", "start -1 is negative"),
    ("chr1\t0\t4.5\ta|1", "end '4.5' is not an integer"),
    ("chr1\t0\t4\ta|1\t0\tx", "strand 'x'; expected"),
])
def test_bed_bad_interval(tmp_path: Path, line: str, message: str) -> None:
    reference = write(tmp_path / "ref.fa", ">chr1\nACGTACGT\n")
    bed = write(tmp_path / "x.bed", f"browser position chr1\n{line}\n")
    with pytest.raises(IntervalError, match=at(bed, 2) + ": " + re.escape(message)):
        load_dataset(bed, task="promoter", reference=reference)


def test_bed_line_with_too_few_fields(tmp_path: Path) -> None:
    reference = write(tmp_path / "ref.fa", ">chr1\nACGTACGT\n")
    bed = write(tmp_path / "x.bed", "chr1\t0\t4\n")
    with pytest.raises(RowError, match=at(bed, 1) + ": 3 fields; expected at least 4"):
        load_dataset(bed, task="promoter", reference=reference)


def test_unindexable_reference(tmp_path: Path) -> None:
    reference = write(tmp_path / "ref.fa", ">chr1\nACGTACGT\nAC\nACGTACGT\n")
    bed = write(tmp_path / "x.bed", "chr1\t0\t4\ta|1\n")
    with pytest.raises(FastaFormatError, match=re.escape(str(reference)) + ": cannot index the reference"):
        load_dataset(bed, task="promoter", reference=reference)


def test_duplicate_ids_in_fasta(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">x|1\nACGT\n>y|0\nACGT\n>x|0\nAAAA\n")
    with pytest.raises(DuplicateIdError, match=at(path, 5) + ": id 'x' already used at " + at(path, 1)):
        load_dataset(path, task="promoter")


def test_duplicate_ids_in_table(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", "id\tsequence\tlabel\nx\tACGT\t1\nx\tACGT\t0\n")
    with pytest.raises(DuplicateIdError, match=at(path, 3) + ": id 'x' already used at " + at(path, 2)):
        load_dataset(path, task="promoter")


def test_truncated_gzip(tmp_path: Path) -> None:
    whole = gzip.compress("".join(f">r{i}|1\n{'ACGTTGCA' * 8}\n" for i in range(2000)).encode())
    path = tmp_path / "big.fa.gz"
    path.write_bytes(whole[: len(whole) // 2])
    expected = re.escape(str(path)) + r", line \d+: gzip stream is truncated or corrupt"
    with pytest.raises(CompressedFileError, match=expected) as caught:
        load_dataset(path, task="promoter")
    assert isinstance(caught.value.__cause__, EOFError)


def test_sequence_before_first_header(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", "\nACGT\n>x|1\nACGT\n")
    with pytest.raises(FastaFormatError, match=at(path, 2) + ": sequence 'ACGT' before the first header"):
        load_dataset(path, task="promoter")


def test_empty_fasta_record(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">x|1\nACGT\n>y|0\n\n>z|1\nACGT\n")
    with pytest.raises(FastaFormatError, match=at(path, 3) + r" \(record 'y\|0'\): empty record"):
        load_dataset(path, task="promoter")


def test_empty_fasta_header(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">x|1\nACGT\n> \nACGT\n")
    with pytest.raises(FastaFormatError, match=at(path, 3) + ": empty header"):
        load_dataset(path, task="promoter")


def test_table_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "id,sequence,label\na,ACGT,1\nb,ACGT\n")
    with pytest.raises(RowError, match=at(path, 3) + ": 2 fields; expected 3 as in the header"):
        load_dataset(path, task="promoter")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_bytes(b"sequence\tlabel\nACGT\t1\nAC\xffGT\t1\n")
    with pytest.raises(RowError, match=at(path, 3) + ": byte 3 is not UTF-8 text"):
        load_dataset(path, task="promoter")


def test_sequence_longer_than_max_len(tmp_path: Path) -> None:
    path = write(tmp_path / "a.fa", ">x|1\nACGT\nACGT\n")
    assert len(load_dataset(path, task="promoter", max_len=8)) == 1
    expected = at(path, 1) + r" \(record 'x\|1'\): sequence of 8 bases exceeds max_len 7"
    with pytest.raises(BadSequenceError, match=expected):
        load_dataset(path, task="promoter", max_len=7)


def test_genomic_benchmarks_with_too_many_classes(tmp_path: Path) -> None:
    for name in ("enhancer", "ocr", "promoter"):
        (tmp_path / "train" / name).mkdir(parents=True)
        write(tmp_path / "train" / name / "0.txt", "ACGT\n")
    with pytest.raises(LabelError, match=re.escape(str(tmp_path / "train")) + ": 3 class folders.*expected 2 "
                                                                             "folders, or label_file="):
        load_dataset(tmp_path, task="enhancer")


def test_genomic_benchmarks_unknown_base_names_file_and_line(tmp_path: Path) -> None:
    for name in ("negative", "positive"):
        (tmp_path / "test" / name).mkdir(parents=True)
        write(tmp_path / "test" / name / "0.txt", "ACGT\n")
    bad = write(tmp_path / "test" / "positive" / "1.txt", "ACGT\nACJT\n")
    with pytest.raises(BadSequenceError, match=at(bad, 2) + r" \(record 'positive/1'\): unknown base 'J' at "
                                                            "sequence position 7"):
        load_dataset(tmp_path, task="enhancer")


def test_a_dataset_gives_back_each_record_as_given():
    import numpy as np

    sequence_task = GenomicDataset([Record("a", "ACGT", 1, "human")], task="promoter")
    position_task = GenomicDataset([Record("b", "ACG", np.array([0, 1, 2]), "mouse")], task="splice")

    assert sequence_task.record(0) == Record("a", "ACGT", 1, "human")
    again = position_task.record(0)
    assert (again.id, again.sequence, again.species) == ("b", "ACG", "mouse")
    assert again.label.tolist() == [0, 1, 2]
