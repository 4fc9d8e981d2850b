"""DNA tokenizer: one token per base, with padding that can never be mistaken for a base.

The seed article mapped padding and unknown bases onto ``A``; here ``<pad>`` is its own id (0),
ambiguity codes read as ``N``, and anything that is not a nucleotide is an error that names
the sequence, the 1-based position and the character.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VOCAB: tuple[str, ...] = ("<pad>", "A", "C", "G", "T", "N", "<mask>", "<cls>")
PAD_ID = 0
A_ID, C_ID, G_ID, T_ID, N_ID = 1, 2, 3, 4, 5
MASK_ID = 6  # masked-base pre-training; <cls> (7) is reserved in the vocabulary
VOCAB_SIZE = len(VOCAB)

# IUPAC ambiguity codes carry partial information we do not model: they read as N.
_AMBIGUOUS = "RYSWKMBDHV"


def _build_table() -> np.ndarray:
    """A 256-entry byte -> token id table; -1 marks a character that is not a base."""
    table = np.full(256, -1, dtype=np.int64)
    for base, token in (("A", A_ID), ("C", C_ID), ("G", G_ID), ("T", T_ID), ("U", T_ID), ("N", N_ID)):
        table[ord(base)] = token
        table[ord(base.lower())] = token  # soft-masked (lower case) repeats are still sequence
    for code in _AMBIGUOUS:
        table[ord(code)] = N_ID
        table[ord(code.lower())] = N_ID
    return table


_TABLE = _build_table()


class SequenceError(ValueError):
    """A sequence that cannot be tokenised: empty, too long, or holding a non-nucleotide character."""


def encode(seq: str, *, index: int = 0, max_len: int | None = None) -> np.ndarray:
    """Tokenise one DNA/RNA sequence.

    Args:
        seq: bases; upper or lower case, ``U`` reads as ``T``, IUPAC ambiguity codes as ``N``.
        index: position of this sequence in its batch or file, used only in error messages.
        max_len: optional upper bound on the length.

    Returns:
        ``np.ndarray[int64]`` of token ids, one per base.

    Raises:
        SequenceError: empty sequence, sequence longer than ``max_len``, or an unknown character.
    """
    if not isinstance(seq, str):
        raise SequenceError(f"sequence {index}: expected a string, got {type(seq).__name__}")
    if not seq:
        raise SequenceError(f"sequence {index}: empty sequence")
    if max_len is not None and len(seq) > max_len:
        raise SequenceError(f"sequence {index}: length {len(seq)} exceeds max_len {max_len}")
    try:
        raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as err:
        raise SequenceError(
            f"sequence {index}, position {err.start + 1}: unknown character {seq[err.start]!r}"
        ) from err
    tokens = _TABLE[raw]
    bad = np.flatnonzero(tokens < 0)
    if bad.size:
        pos = int(bad[0])
        raise SequenceError(
            f"sequence {index}, position {pos + 1}: unknown character {seq[pos]!r} "
            f"(expected one of A C G T U N or an IUPAC ambiguity code)"
        )
    return tokens


def encode_batch(seqs: Sequence[str], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise and right-pad a batch.

    Args:
        seqs: the sequences.
        max_len: longest allowed sequence; the batch is padded to its longest member.

    Returns:
        ``(tokens, mask)``: ``int64 [B, L]`` padded with ``PAD_ID`` and ``bool [B, L]``, True on real bases.

    Raises:
        SequenceError: for an empty batch or any bad sequence (naming its index).
    """
    if len(seqs) == 0:
        raise SequenceError("empty batch: expected at least one sequence")
    encoded = [encode(s, index=i, max_len=max_len) for i, s in enumerate(seqs)]
    width = max(len(t) for t in encoded)
    tokens = np.full((len(encoded), width), PAD_ID, dtype=np.int64)
    for row, t in enumerate(encoded):
        tokens[row, : len(t)] = t
    return tokens, tokens != PAD_ID


def decode(tokens: Sequence[int] | np.ndarray) -> str:
    """Token ids back to bases; padding is dropped, special tokens are written in angle brackets."""
    return "".join(VOCAB[int(t)] for t in tokens if int(t) != PAD_ID)
