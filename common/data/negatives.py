"""Negative sequences for a task an institution only has positives for (peaks, TSS windows).

* :func:`dinucleotide_shuffle`: the same bases in a new order that keeps every dinucleotide count
  (Altschul & Erickson 1985; the shuffle MEME's ``fasta-shuffle-letters -kmer 2`` and HOMER use), so
  a classifier cannot win on GC content or CpG frequency alone and has to find the motifs;
* :func:`flank_windows`: windows of the same size a fixed distance up- and downstream of each
  positive, on the same contig, kept only where they overlap no positive (local genomic background).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def dinucleotide_shuffle(sequence: str, rng: np.random.Generator) -> str:
    """A random sequence with exactly ``sequence``'s dinucleotide counts, first and last base.

    Altschul-Erickson: pick a random last-exit edge for every base but the final one so that the
    last-exit edges form a tree into the final base, shuffle each base's other out-edges, and walk
    the Eulerian path. Case is folded to upper; ``N`` is a letter like any other.
    """
    seq = sequence.upper()
    if len(seq) < 3:
        return seq
    edges: dict[str, list[str]] = defaultdict(list)
    for a, b in zip(seq, seq[1:], strict=False):
        edges[a].append(b)
    last = seq[-1]
    while True:  # the last-exit edges must all lead to `last` (a spanning arborescence)
        last_exit = {v: outs[rng.integers(len(outs))] for v, outs in edges.items() if v != last}
        if _reaches(last_exit, last):
            break
    walks: dict[str, list[str]] = {}
    for v, outs in edges.items():
        rest = list(outs)
        if v in last_exit:
            rest.remove(last_exit[v])
        order = rng.permutation(len(rest))
        walks[v] = [rest[i] for i in order] + ([last_exit[v]] if v in last_exit else [])
    position = {v: 0 for v in walks}
    out, current = [seq[0]], seq[0]
    for _ in range(len(seq) - 1):
        current = walks[current][position[current]]
        position[out[-1]] += 1
        out.append(current)
    return "".join(out)


def _reaches(last_exit: dict[str, str], last: str) -> bool:
    for start in last_exit:
        seen, v = set(), start
        while v != last:
            if v in seen:
                return False
            seen.add(v)
            v = last_exit[v]
    return True


def flank_windows(intervals: Sequence[tuple[str, int, int]], contig_lengths: dict[str, int], *,
                  distance: int) -> list[tuple[str, int, int]]:
    """Same-size windows ``distance`` bases up- and downstream of each interval ``(chrom, start,
    end)``, dropped where they leave the contig or overlap any interval; each kept window once."""
    by_chrom: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for chrom, start, end in intervals:
        by_chrom[chrom].append((start, end))
    index = {chrom: _SpanIndex(spans) for chrom, spans in by_chrom.items()}
    kept, seen = [], set()
    for chrom, start, end in intervals:
        size = end - start
        for new_start in (start - distance - size, end + distance):
            window = (chrom, new_start, new_start + size)
            if (new_start < 0 or new_start + size > contig_lengths[chrom] or window in seen
                    or index[chrom].overlaps(new_start, new_start + size)):
                continue
            seen.add(window)
            kept.append(window)
    return kept


class _SpanIndex:
    """Half-open spans sorted by start, with the running maximum of their ends: some span overlaps
    ``[start, end)`` exactly when the spans starting before ``end`` reach past ``start``."""

    def __init__(self, spans: list[tuple[int, int]]):
        spans = sorted(spans)
        self.starts = np.array([s for s, _ in spans])
        self.reach = np.maximum.accumulate(np.array([e for _, e in spans]))

    def overlaps(self, start: int, end: int) -> bool:
        before = int(np.searchsorted(self.starts, end, side="left"))
        return before > 0 and int(self.reach[before - 1]) > start
