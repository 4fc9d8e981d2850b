"""Published numbers the generator plants and the analysis module searches: motif matrices,
splice-site matrices, codon usage and GC content, each with its source.

Everything here is data, copied from the sources named beside it (as gathered in
``shared/reference/genomic-reference.md``); the few matrices we had to build from a textbook
consensus (no published matrix was available offline) say so in their ``source`` and have
``kind == "consensus"``, so a motif search can leave them out.

All matrices are probabilities with rows A, C, G, T and columns 5'->3'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BASES = "ACGT"
JASPAR_PSEUDOCOUNT = 0.2  # genomic-reference.md §1: p = (count + 0.2) / (N + 0.8)


@dataclass(frozen=True)
class Motif:
    """One position probability matrix.

    ``probabilities`` is ``float64 [4, width]`` (rows A, C, G, T), each column summing to 1.
    ``kind`` is ``"jaspar"`` (JASPAR 2024 CORE counts), ``"splice"`` (human splice-site
    frequencies) or ``"consensus"`` (built by us from a textbook consensus string).
    """

    id: str
    name: str
    kind: str
    source: str
    probabilities: np.ndarray = field(repr=False)

    @property
    def width(self) -> int:
        return int(self.probabilities.shape[1])

    @property
    def consensus(self) -> str:
        """Most likely base per column: upper case where its probability is >= 0.5."""
        best = self.probabilities.argmax(axis=0)
        top = self.probabilities.max(axis=0)
        return "".join(BASES[b] if p >= 0.5 else BASES[b].lower() for b, p in zip(best, top, strict=True))

    def log_odds(self, background: np.ndarray) -> np.ndarray:
        """Natural-log odds ``[4, width]`` of this motif against a base composition ``[4]``."""
        return np.log(self.probabilities) - np.log(np.asarray(background, dtype=float))[:, None]


def counts_to_probabilities(counts: list[list[float]], *, pseudocount: float = JASPAR_PSEUDOCOUNT) -> np.ndarray:
    """JASPAR counts ``[4, width]`` -> probabilities with ``pseudocount`` per base (4x per column)."""
    matrix = np.asarray(counts, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != 4:
        raise ValueError(f"expected a count matrix with 4 rows (A, C, G, T), got shape {matrix.shape}")
    return (matrix + pseudocount) / (matrix.sum(axis=0) + 4 * pseudocount)


def frequencies_to_probabilities(frequencies: list[list[float]]) -> np.ndarray:
    """Published frequencies (rounded to 3 decimals) -> columns that sum exactly to 1."""
    matrix = np.asarray(frequencies, dtype=float)
    return matrix / matrix.sum(axis=0)


def _jaspar(motif_id: str, name: str, pubmed: str, counts: list[list[float]]) -> Motif:
    source = f"JASPAR 2024 CORE {motif_id} ({name}), raw counts; PubMed {pubmed}"
    return Motif(motif_id, name, "jaspar", source, counts_to_probabilities(counts))


# --- JASPAR 2024 CORE count matrices (genomic-reference.md §1), rows A, C, G, T ----------------
_JASPAR = [
    _jaspar("MA0108.2", "TBP", "2329577", [  # TATA box, 15-mer; core TATAAAA at columns 2-8
        [61, 16, 352, 3, 354, 268, 360, 222, 155, 56, 83, 82, 82, 68, 77],
        [145, 46, 0, 10, 0, 0, 3, 2, 44, 135, 147, 127, 118, 107, 101],
        [152, 18, 2, 2, 5, 0, 20, 44, 157, 150, 128, 128, 128, 139, 140],
        [31, 309, 35, 374, 30, 121, 6, 121, 33, 48, 31, 52, 61, 75, 71]]),
    _jaspar("MA0108.3", "TBP", "2329577", [  # TATA box core, 7-mer
        [16, 352, 3, 354, 268, 360, 222],
        [46, 0, 10, 0, 0, 3, 2],
        [18, 2, 2, 5, 0, 20, 44],
        [309, 35, 374, 30, 121, 6, 121]]),
    _jaspar("MA0060.1", "NFYA", "9469818", [  # CCAAT box, compiled 16-mer
        [34, 16, 7, 58, 51, 0, 2, 112, 116, 0, 14, 66, 13, 39, 36, 25],
        [37, 33, 51, 14, 4, 116, 113, 0, 0, 1, 65, 6, 20, 43, 9, 35],
        [27, 26, 25, 41, 56, 0, 1, 1, 0, 0, 33, 42, 73, 22, 47, 29],
        [18, 41, 33, 3, 5, 0, 0, 3, 0, 115, 4, 2, 10, 12, 24, 27]]),
    _jaspar("MA0060.3", "NFYA", "9469818", [  # CCAAT box, ChIP-seq 11-mer
        [1897, 1924, 23, 31, 4683, 4584, 37, 166, 4088, 611, 1855],
        [757, 404, 4657, 4713, 29, 94, 132, 4215, 213, 1131, 1369],
        [1815, 1858, 34, 28, 17, 124, 11, 319, 489, 2713, 887],
        [356, 639, 111, 53, 96, 23, 4645, 125, 35, 370, 714]]),
    _jaspar("MA0079.2", "SP1", "17916232", [  # GC box, compiled 10-mer, C-rich strand
        [0, 0, 0, 4, 2, 0, 1, 0, 6, 3],
        [32, 30, 35, 27, 5, 28, 31, 24, 25, 26],
        [1, 1, 0, 0, 15, 1, 0, 3, 0, 3],
        [2, 4, 0, 4, 13, 6, 3, 8, 4, 3]]),
    _jaspar("MA0079.3", "SP1", "17916232", [  # GC box, ChIP-seq 11-mer, C-rich strand
        [857, 0, 99, 0, 0, 1359, 0, 0, 0, 1054, 652],
        [1786, 6215, 6703, 8734, 8661, 0, 8734, 8734, 6679, 6357, 4969],
        [4271, 642, 0, 0, 0, 4624, 0, 0, 0, 0, 734],
        [1820, 1877, 1932, 0, 73, 2751, 0, 0, 2055, 1323, 2379]]),
    _jaspar("MA0079.5", "SP1", "22021377", [  # GC box, ChIP-seq 9-mer, G-rich strand (GGGGCGGGG)
        [1.05, 1.05, 1.05, 1.05, 266.88, 1.05, 1.05, 254.22, 161.39],
        [1.05, 1.05, 1.05, 1.05, 731.01, 1.05, 85.44, 51.69, 1.05],
        [950.42, 996.84, 996.84, 996.84, 1.05, 996.84, 912.45, 659.28, 836.50],
        [47.47, 1.05, 1.05, 1.05, 1.05, 1.05, 1.05, 34.81, 1.05]]),
    _jaspar("MA0095.4", "Yy1", "18950698", [  # YY1, initiator-associated (mouse)
        [3123, 41529, 39666, 30769, 41506, 689, 561, 1597],
        [33122, 926, 1447, 2536, 746, 241, 165, 971],
        [3684, 287, 1320, 8658, 712, 708, 42263, 39612],
        [3419, 606, 915, 1385, 384, 41710, 359, 1168]]),
    _jaspar("MA0139.2", "CTCF", "17512414", [  # insulator / enhancer-blocking
        [281, 56, 8, 744, 40, 107, 851, 5, 333, 54, 12, 56, 104, 372, 82],
        [49, 800, 903, 13, 528, 433, 11, 0, 3, 12, 0, 8, 733, 13, 482],
        [449, 21, 0, 65, 334, 48, 32, 903, 566, 504, 890, 775, 5, 507, 307],
        [134, 36, 2, 91, 11, 324, 18, 3, 9, 341, 8, 71, 67, 17, 37]]),
    _jaspar("MA0102.5", "CEBPA", "8632009", [  # enhancer-type bZIP
        [54374, 869, 1002, 9252, 1148, 62409, 6095, 71916, 75177, 4506],
        [7284, 826, 282, 936, 75124, 3535, 61538, 5655, 1034, 16193],
        [12772, 722, 2365, 57887, 678, 6751, 1583, 340, 1381, 7312],
        [4573, 76586, 75354, 10928, 2053, 6308, 9787, 1092, 1411, 50992]]),
    _jaspar("MA0039.5", "KLF4", "28473536", [  # GC/GT box
        [2465, 2105, 7021, 1173, 45602, 852, 1617, 1202],
        [49209, 47865, 45405, 52875, 161, 52366, 51112, 51045],
        [1583, 1214, 1422, 793, 6598, 1470, 1870, 1005],
        [2560, 4633, 1969, 976, 3456, 1129, 1218, 2565]]),
]

# --- Human splice-site frequency matrices (genomic-reference.md §2) ------------------------------
_SQUIRLS = ("monarch-initiative/Squirls sss-ingest/src/main/resources/"
            "splicing-information-content-matrix.yaml (aligned human RefSeq splice sites)")

# Donor: 9 columns, exon -3 -2 -1 | intron +1 ... +6 (MaxEntScan's 9-mer window); consensus MAG|GTRAGT.
DONOR_EXON_BASES = 3
_DONOR = Motif("SPLICE-DONOR", "donor 5'ss", "splice", _SQUIRLS, frequencies_to_probabilities([
    [0.332, 0.638, 0.097, 0.002, 0.001, 0.597, 0.683, 0.091, 0.179],
    [0.359, 0.107, 0.028, 0.001, 0.012, 0.031, 0.079, 0.060, 0.152],
    [0.186, 0.117, 0.806, 0.996, 0.001, 0.339, 0.122, 0.771, 0.191],
    [0.123, 0.139, 0.069, 0.001, 0.986, 0.032, 0.116, 0.079, 0.478]]))

# Acceptor: 27 columns, intron -25 ... -1 | exon +1 +2; the intron ends in A (-2) G (-1).
# Columns -25 ... -5 carry the polypyrimidine tract (C+T rising from 0.59 to ~0.84).
ACCEPTOR_INTRON_BASES = 25
_ACCEPTOR = Motif("SPLICE-ACCEPTOR", "acceptor 3'ss", "splice", _SQUIRLS, frequencies_to_probabilities([
    [0.248, 0.242, 0.238, 0.228, 0.215, 0.201, 0.181, 0.164, 0.147, 0.136, 0.125, 0.116, 0.106, 0.097,
     0.090, 0.091, 0.102, 0.111, 0.117, 0.092, 0.096, 0.240, 0.063, 0.997, 0.001, 0.261, 0.251],
    [0.242, 0.247, 0.250, 0.250, 0.253, 0.255, 0.263, 0.268, 0.271, 0.274, 0.281, 0.278, 0.274, 0.278,
     0.259, 0.281, 0.292, 0.319, 0.330, 0.339, 0.293, 0.272, 0.644, 0.001, 0.002, 0.147, 0.191],
    [0.159, 0.155, 0.154, 0.151, 0.151, 0.148, 0.148, 0.142, 0.138, 0.136, 0.128, 0.122, 0.116, 0.107,
     0.102, 0.108, 0.114, 0.104, 0.093, 0.066, 0.066, 0.207, 0.006, 0.001, 0.996, 0.478, 0.194],
    [0.350, 0.355, 0.358, 0.371, 0.381, 0.397, 0.409, 0.426, 0.444, 0.454, 0.466, 0.483, 0.504, 0.518,
     0.549, 0.519, 0.491, 0.465, 0.460, 0.504, 0.545, 0.281, 0.287, 0.001, 0.001, 0.114, 0.365]]))


# --- Matrices built from textbook consensus strings (no published matrix at hand) ----------------
_IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "W": "AT", "S": "CG",
          "K": "GT", "M": "AC", "N": "ACGT", "V": "ACG"}


def consensus_to_probabilities(consensus: str, *, strong: float = 0.95, weak: float = 0.35) -> np.ndarray:
    """IUPAC consensus -> probabilities. A column's allowed bases get their share under a uniform
    draw plus ``strong`` (upper case) or ``weak`` (lower case) of the remainder; the rest is spread
    over the other bases. These weights are a modelling choice, not measurements."""
    columns = []
    for symbol in consensus:
        allowed = _IUPAC[symbol.upper()]
        coverage = len(allowed) / 4
        mass = coverage + (1.0 - coverage) * (strong if symbol.isupper() else weak)
        column = np.full(4, (1.0 - mass) / max(4 - len(allowed), 1))
        for base in allowed:
            column[BASES.index(base)] = mass / len(allowed)
        columns.append(column)
    return np.stack(columns, axis=1)


def _kozak() -> np.ndarray:
    """Kozak 1987, gccRccATGG (positions -6 ... +4): the purine at -3 is A more often than G."""
    matrix = consensus_to_probabilities("gccRccATGG")
    matrix[:, 3] = [0.55, 0.05, 0.35, 0.05]  # -3: A > G, both purines
    matrix[:, 6:9] = np.eye(4)[:, [0, 3, 2]]  # the start codon itself is always ATG
    return matrix


def _consensus(motif_id: str, name: str, source: str, consensus: str) -> Motif:
    return Motif(motif_id, name, "consensus", source, consensus_to_probabilities(consensus))


_CONSENSUS = [
    Motif("KOZAK", "Kozak", "consensus", "Kozak 1987 consensus gccRccATGG (genomic-reference.md §3)", _kozak()),
    _consensus("BRANCH-YUNAY", "branch point", "textbook consensus yUnAy, branch A 4th "
               "(genomic-reference.md §2)", "yTnAy"),
    _consensus("BRANCH-YEAST", "yeast branch point", "textbook S. cerevisiae consensus UACUAAC "
               "(genomic-reference.md §2)", "TACTAAC"),
    _consensus("INR-MAMMAL", "initiator", "Javahery et al. 1994 consensus YYANWYY", "YYANWYY"),
    _consensus("INR-FLY", "initiator (fly)", "Kutach & Kadonaga 2000 consensus TCAKTY", "TCAKTY"),
    _consensus("DPE-FLY", "downstream promoter element", "Burke & Kadonaga 1997 consensus RGWYV",
               "RGWYV"),
    _consensus("DRE-FLY", "DNA replication-related element", "Hirose et al. 1993 consensus TATCGATA",
               "TATCGATA"),
    _consensus("MOTIF1-FLY", "Ohler motif 1", "Ohler et al. 2002 consensus YGGTCACACTR", "YGGTCACACTR"),
    _consensus("UP-ELEMENT", "UP element", "E. coli UP element consensus AAAWWTWTTTTNNNAAANNN "
               "(Estrem et al. 1998)", "AAAWWTWTTTTNNNAAANNN"),
    _consensus("SIGMA70-35", "sigma70 -35 box", "E. coli sigma70 consensus TTGACA (Harley & Reynolds 1987)",
               "TTGACA"),
    _consensus("SIGMA70-10", "sigma70 -10 box", "E. coli sigma70 Pribnow box TATAAT (Harley & Reynolds 1987)",
               "TATAAT"),
    _consensus("SHINE-DALGARNO", "Shine-Dalgarno", "Shine & Dalgarno 1974 consensus AGGAGG", "AGGAGG"),
]

MOTIFS: dict[str, Motif] = {m.id: m for m in (*_JASPAR, _DONOR, _ACCEPTOR, *_CONSENSUS)}
DONOR, ACCEPTOR = _DONOR, _ACCEPTOR


def get_motif(motif_id: str) -> Motif:
    """A motif by ID (e.g. ``"MA0108.2"``); an unknown ID is an error listing the known ones."""
    try:
        return MOTIFS[motif_id]
    except KeyError:
        raise KeyError(f"unknown motif {motif_id!r}; known: {', '.join(MOTIFS)}") from None


def searchable_motifs() -> list[Motif]:
    """The measured matrices (JASPAR and splice sites), for a closest-known-motif search."""
    return [m for m in MOTIFS.values() if m.kind != "consensus"]


# --- Codon usage (genomic-reference.md §4) ------------------------------------------------------
# Relative synonymous codon frequencies (fraction within each amino acid), python-codon-tables
# 0.1.18, CC0. Columns are the package's file names (organism_taxid); "*" is stop.
CODON_TABLE_SOURCE = "python-codon-tables 0.1.18 (CC0), relative synonymous codon frequencies"
CODON_TABLE_COLUMNS = ("h_sapiens_9606", "m_musculus_10090", "e_coli_316407", "s_cerevisiae_4932",
                       "d_melanogaster_7227", "c_elegans_6239", "b_subtilis_1423", "g_gallus_9031")
_CODON_ROWS = """
* TAA 0.30 0.28 0.64 0.47 0.41 0.43 0.61 0.32
* TAG 0.24 0.23 0.07 0.23 0.33 0.18 0.15 0.20
* TGA 0.47 0.49 0.29 0.30 0.25 0.39 0.24 0.47
A GCA 0.23 0.23 0.21 0.29 0.17 0.31 0.28 0.26
A GCC 0.40 0.38 0.27 0.22 0.45 0.20 0.22 0.32
A GCG 0.11 0.09 0.36 0.11 0.19 0.13 0.26 0.13
A GCT 0.27 0.29 0.16 0.38 0.19 0.36 0.24 0.29
C TGC 0.54 0.52 0.56 0.37 0.71 0.45 0.54 0.60
C TGT 0.46 0.48 0.44 0.63 0.29 0.55 0.46 0.40
D GAC 0.54 0.55 0.37 0.35 0.47 0.32 0.36 0.50
D GAT 0.46 0.45 0.63 0.65 0.53 0.68 0.64 0.50
E GAA 0.42 0.41 0.69 0.70 0.33 0.62 0.68 0.43
E GAG 0.58 0.59 0.31 0.30 0.67 0.38 0.32 0.57
F TTC 0.54 0.56 0.43 0.41 0.62 0.51 0.32 0.55
F TTT 0.46 0.44 0.57 0.59 0.38 0.49 0.68 0.45
G GGA 0.25 0.26 0.11 0.22 0.29 0.59 0.31 0.27
G GGC 0.34 0.33 0.41 0.19 0.43 0.12 0.34 0.31
G GGG 0.25 0.23 0.15 0.12 0.07 0.08 0.16 0.25
G GGT 0.16 0.18 0.34 0.47 0.21 0.20 0.19 0.18
H CAC 0.58 0.59 0.43 0.36 0.60 0.39 0.32 0.60
H CAT 0.42 0.41 0.57 0.64 0.40 0.61 0.68 0.40
I ATA 0.17 0.16 0.07 0.27 0.19 0.16 0.13 0.18
I ATC 0.47 0.50 0.42 0.26 0.47 0.31 0.37 0.46
I ATT 0.36 0.34 0.51 0.46 0.34 0.53 0.49 0.35
K AAA 0.43 0.39 0.76 0.58 0.30 0.59 0.70 0.44
K AAG 0.57 0.61 0.24 0.42 0.70 0.41 0.30 0.56
L CTA 0.07 0.08 0.04 0.14 0.09 0.09 0.05 0.06
L CTC 0.20 0.20 0.10 0.06 0.15 0.17 0.11 0.18
L CTG 0.40 0.39 0.50 0.11 0.43 0.14 0.24 0.41
L CTT 0.13 0.13 0.10 0.13 0.10 0.25 0.23 0.13
L TTA 0.08 0.07 0.13 0.28 0.05 0.11 0.21 0.08
L TTG 0.13 0.13 0.13 0.29 0.18 0.23 0.16 0.13
M ATG 1.00 1.00 1.00 1.00 1.00 1.00 1.00 1.00
N AAC 0.53 0.57 0.55 0.41 0.56 0.38 0.44 0.57
N AAT 0.47 0.43 0.45 0.59 0.44 0.62 0.56 0.43
P CCA 0.28 0.29 0.19 0.42 0.25 0.53 0.19 0.28
P CCC 0.32 0.30 0.12 0.15 0.33 0.09 0.09 0.30
P CCG 0.11 0.10 0.53 0.12 0.29 0.20 0.44 0.14
P CCT 0.29 0.31 0.16 0.31 0.13 0.18 0.28 0.27
Q CAA 0.27 0.26 0.35 0.69 0.30 0.66 0.52 0.27
Q CAG 0.73 0.74 0.65 0.31 0.70 0.34 0.48 0.73
R AGA 0.21 0.22 0.04 0.48 0.09 0.29 0.25 0.22
R AGG 0.21 0.22 0.02 0.21 0.11 0.08 0.10 0.21
R CGA 0.11 0.12 0.06 0.07 0.15 0.23 0.10 0.10
R CGC 0.18 0.17 0.40 0.06 0.33 0.10 0.20 0.19
R CGG 0.20 0.19 0.10 0.04 0.15 0.09 0.17 0.18
R CGT 0.08 0.08 0.38 0.14 0.16 0.21 0.18 0.10
S AGC 0.24 0.24 0.28 0.11 0.25 0.10 0.23 0.26
S AGT 0.15 0.15 0.15 0.16 0.14 0.15 0.11 0.14
S TCA 0.15 0.14 0.12 0.21 0.09 0.26 0.23 0.15
S TCC 0.22 0.22 0.15 0.16 0.24 0.13 0.13 0.20
S TCG 0.05 0.05 0.15 0.10 0.20 0.15 0.10 0.07
S TCT 0.19 0.20 0.15 0.26 0.08 0.21 0.20 0.18
T ACA 0.28 0.29 0.13 0.30 0.20 0.34 0.40 0.30
T ACC 0.36 0.35 0.44 0.22 0.38 0.18 0.17 0.31
T ACG 0.11 0.10 0.27 0.14 0.26 0.15 0.27 0.14
T ACT 0.25 0.25 0.16 0.35 0.17 0.32 0.16 0.25
V GTA 0.12 0.12 0.15 0.21 0.11 0.16 0.20 0.12
V GTC 0.24 0.25 0.22 0.21 0.24 0.22 0.26 0.22
V GTG 0.46 0.46 0.37 0.19 0.47 0.23 0.26 0.45
V GTT 0.18 0.17 0.26 0.39 0.19 0.39 0.28 0.21
W TGG 1.00 1.00 1.00 1.00 1.00 1.00 1.00 1.00
Y TAC 0.56 0.57 0.43 0.44 0.63 0.44 0.35 0.60
Y TAT 0.44 0.43 0.57 0.56 0.37 0.56 0.65 0.40
"""


def _parse_codon_rows() -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    genetic_code: dict[str, str] = {}
    usage: dict[str, dict[str, float]] = {column: {} for column in CODON_TABLE_COLUMNS}
    for line in _CODON_ROWS.strip().splitlines():
        amino_acid, codon, *fractions = line.split()
        genetic_code[codon] = amino_acid
        for column, fraction in zip(CODON_TABLE_COLUMNS, fractions, strict=True):
            usage[column][codon] = float(fraction)
    return genetic_code, usage


# GENETIC_CODE: the standard code, codon -> one-letter amino acid ("*" = stop), all 64 codons.
# CODON_USAGE: table column -> codon -> fraction among the codons of its amino acid (as published,
# rounded to 2 decimals; normalise within an amino acid before sampling).
GENETIC_CODE, CODON_USAGE = _parse_codon_rows()
STOP_CODONS = tuple(c for c, aa in GENETIC_CODE.items() if aa == "*")

# Amino-acid composition (%) of UniProtKB/Swiss-Prot (release statistics, rounded); not in the
# reference file, needed to turn per-amino-acid codon fractions into codon frequencies.
AMINO_ACID_PERCENT = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07,
    "H": 2.27, "I": 5.96, "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56,
    "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}

# --- GC content (genomic-reference.md §5) -------------------------------------------------------
# Genome-wide GC, commonly cited approximate values.
GENOME_GC = {
    "h_sapiens": 0.409,       # GRCh38
    "m_musculus": 0.417,      # 41.7-42 %
    "d_melanogaster": 0.42,
    "s_cerevisiae": 0.383,
    "e_coli": 0.508,          # K-12 MG1655
    "c_elegans": 0.354,
}
# GC of coding sequence, Kazusa CDS totals: (overall, GC1, GC2, GC3).
CODING_GC = {
    "h_sapiens": (0.523, 0.557, 0.425, 0.586),
    "m_musculus": (0.520, 0.552, 0.423, 0.586),
    "s_cerevisiae": (0.398, 0.446, 0.366, 0.381),
}
# CpG islands (Gardiner-Garden & Frommer 1987, approximate): GC > 0.55-0.65, observed/expected CpG > 0.6.
CPG_ISLAND_GC = 0.62
CPG_ISLAND_OBS_EXP = 0.8
