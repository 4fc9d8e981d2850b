import numpy as np
import pytest

from common.tokenizer import (
    A_ID,
    C_ID,
    G_ID,
    N_ID,
    PAD_ID,
    T_ID,
    VOCAB,
    SequenceError,
    decode,
    encode,
    encode_batch,
)


def test_vocabulary_layout():
    assert VOCAB == ("<pad>", "A", "C", "G", "T", "N", "<mask>", "<cls>")
    assert PAD_ID == 0


def test_bases_map_to_their_ids():
    assert encode("ACGTN").tolist() == [A_ID, C_ID, G_ID, T_ID, N_ID]
    assert encode("ACGT").dtype == np.int64


def test_lower_case_reads_as_upper_case():
    assert encode("acgtn").tolist() == encode("ACGTN").tolist()


def test_u_reads_as_t():
    assert encode("UuT").tolist() == [T_ID, T_ID, T_ID]


@pytest.mark.parametrize("code", list("RYSWKMBDHVryswkmbdhv"))
def test_iupac_ambiguity_codes_read_as_n(code):
    assert encode(code).tolist() == [N_ID]


def test_padding_never_comes_from_a_base():
    assert PAD_ID not in encode("ACGTNRYacgtn").tolist()


@pytest.mark.parametrize("seq, position, char", [("ACGX", 4, "X"), ("A-CG", 2, "-"), ("AC GT", 3, " "),
                                                 ("ACGT*", 5, "*"), ("AC\u00e9", 3, "\u00e9"), ("E", 1, "E")])
def test_unknown_character_names_position_and_character(seq, position, char):
    with pytest.raises(SequenceError, match=rf"sequence 7, position {position}: unknown character '{char}'"):
        encode(seq, index=7)


def test_empty_sequence_is_an_error():
    with pytest.raises(SequenceError, match="sequence 3: empty sequence"):
        encode("", index=3)


def test_too_long_sequence_is_an_error():
    with pytest.raises(SequenceError, match="sequence 0: length 5 exceeds max_len 4"):
        encode("ACGTA", max_len=4)


def test_sequence_error_is_a_value_error():
    assert issubclass(SequenceError, ValueError)


def test_batch_pads_with_pad_id_and_masks_real_bases():
    tokens, mask = encode_batch(["ACGT", "AC"])
    assert tokens.tolist() == [[A_ID, C_ID, G_ID, T_ID], [A_ID, C_ID, PAD_ID, PAD_ID]]
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_batch_error_names_the_sequence_index():
    with pytest.raises(SequenceError, match="sequence 2, position 3: unknown character 'Z'"):
        encode_batch(["ACGT", "AC", "ACZ"])
    with pytest.raises(SequenceError, match="sequence 1: length 6 exceeds max_len 5"):
        encode_batch(["ACG", "ACGTAC"], max_len=5)
    with pytest.raises(SequenceError, match="sequence 1: empty"):
        encode_batch(["ACG", ""])
    with pytest.raises(SequenceError, match="empty batch"):
        encode_batch([])


def test_decode_round_trip():
    assert decode(encode("ACGTN")) == "ACGTN"
