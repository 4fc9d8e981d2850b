"""Write a whole simulated federation's data to disk.

Layout under ``out_dir``::

    <institution>/<task>/{train,val,test}.tsv   id, species, sequence, label   (splice: labels)
    central/<task>/test.tsv                     held-out set: every federation species with the task
    central/<task>/oracle.tsv                   id, oracle (P(label = 1), sequence tasks only)
    variants.tsv                                id, species, ref, alt, motif, effect, task, kind, position
    public/<species>.fa                         unlabelled public sequence of each federation species
                                                (for pre-training; disjoint from every record above)
    manifest.yaml                               institutions, species, tasks, counts, parameters, seed

TSV files are UTF-8 with a header row and ``\\n`` line ends; a splice ``labels`` value is one digit
(0 neither, 1 donor, 2 acceptor) per base. The same arguments write the same bytes.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.progress import Progress

from common.atomic import atomic_write_text
from common.data.dataset import DataError, Record
from common.data.partition import split_train_val_test
from common.synthetic.generator import (
    DEFAULT_DIFFICULTY,
    DEFAULT_LENGTHS,
    MIN_LENGTHS,
    SyntheticSet,
    generate,
    get_species,
)
from common.synthetic.genome import (
    Difficulty,
    SyntheticError,
    require_task,
    reverse_complement,
    sample_markov,
    species_background,
    to_codes,
    to_string,
)
from common.synthetic.variants import VARIANT_TASKS, VariantPair, generate_variant_pairs
from common.tasks import TASK_NAMES

MANIFEST = "manifest.yaml"
FORMAT = "helixfed-synthetic/1"
CENTRAL = "central"
PUBLIC = "public"
DEFAULT_PUBLIC_BASES = 200_000
PUBLIC_RECORD_BASES = 50_000  # bases per record of a public FASTA (records of a "chromosome")
_FASTA_WIDTH = 60
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VARIANT_COLUMNS = ("id", "species", "ref", "alt", "motif", "effect", "task", "kind", "position")


@dataclass(frozen=True)
class InstitutionSpec:
    """One simulated institution: its species, the tasks it holds data for, and its size as a
    multiple of ``n_per_task``; ``positive_fraction`` skews its labels (sequence tasks)."""

    name: str
    species: str
    tasks: tuple[str, ...]
    size: float = 1.0
    positive_fraction: float = 0.5

    def __post_init__(self) -> None:
        where = f"institution {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name) or self.name == CENTRAL:
            raise DataError(f"institution name {self.name!r}: expected letters, digits, '_', '.', '-' "
                            f"(and not {CENTRAL!r})")
        if isinstance(self.tasks, str) or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise DataError(f"{where}: tasks: expected a non-empty list of distinct task names, "
                            f"got {self.tasks!r}")
        try:
            profile = get_species(self.species)
            for task in self.tasks:
                require_task(profile, task)
        except SyntheticError as err:
            raise DataError(f"{where}: {err}") from err
        if not isinstance(self.size, int | float) or not self.size > 0:
            raise DataError(f"{where}: size: expected a positive number, got {self.size!r}")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise DataError(f"{where}: positive_fraction: expected a number in [0, 1], "
                            f"got {self.positive_fraction!r}")
        object.__setattr__(self, "species", profile.name)  # aliases resolve to one spelling
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "size", float(self.size))

    @classmethod
    def from_value(cls, value: object) -> InstitutionSpec:
        """Accept a spec; a mapping with exactly this class's field names (an unknown key is an
        error); or a config object (e.g. ``common.config.InstitutionConfig``) whose ``name``,
        ``species``, ``tasks`` and optional ``size`` / ``positive_fraction`` attributes are read."""
        if isinstance(value, InstitutionSpec):
            return value
        known = [f.name for f in fields(cls)]
        if not isinstance(value, Mapping):
            missing = [key for key in ("name", "species", "tasks") if not hasattr(value, key)]
            if missing:
                raise DataError(f"institution: {type(value).__name__} has no attribute(s) {missing}")
            return cls(**{key: getattr(value, key) for key in known if hasattr(value, key)})
        unknown = sorted(set(value) - set(known))
        missing = sorted({"name", "species", "tasks"} - set(value))
        if unknown or missing:
            raise DataError(f"institution {value.get('name', '?')!r}: unknown keys {unknown}, missing keys "
                            f"{missing}; expected keys {known}")
        return cls(**value)


def _derived_seed(seed: int, *names: str) -> int:
    """A seed for one (institution, task) or central set: stable across runs and Python versions."""
    words = [seed, *(zlib.crc32(name.encode()) for name in names)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def _label_cell(record: Record) -> str:
    if np.ndim(record.label):
        return "".join(map(str, np.asarray(record.label).tolist()))
    return str(int(record.label))


def _write_text(path: Path, text: str) -> None:
    """Write atomically: a reader never sees half a file, and a failure leaves the old one."""
    atomic_write_text(path, text)


def write_records(path: Path, records: Sequence[Record], *, per_position: bool) -> None:
    """One TSV of records: ``id species sequence label`` (``labels`` for per-position tasks)."""
    header = f"id\tspecies\tsequence\t{'labels' if per_position else 'label'}\n"
    rows = [f"{r.id}\t{r.species}\t{r.sequence}\t{_label_cell(r)}\n" for r in records]
    _write_text(path, header + "".join(rows))


def _write_variants(path: Path, pairs: Sequence[VariantPair]) -> None:
    rows = ["\t".join(str(getattr(p, c)) for c in _VARIANT_COLUMNS) + "\n" for p in pairs]
    _write_text(path, "\t".join(_VARIANT_COLUMNS) + "\n" + "".join(rows))


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to write into a non-empty directory this module did not write (no manifest)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise DataError(f"{out_dir}: not empty and holds no {MANIFEST}; refusing to write generated data into it")


def _check_arguments(specs, *, seed, n_per_task, central_n, lengths, difficulty, variants_per_species,
                     split_fractions, public_bases) -> dict[str, int]:
    if not specs:
        raise DataError("institutions: expected at least one institution")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"institutions: duplicate names {duplicates}")
    for key, value in (("n_per_task", n_per_task), ("central_n", central_n)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{key}: expected a positive integer, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed: expected a non-negative integer, got {seed!r}")
    try:
        Difficulty(difficulty)
    except SyntheticError as err:
        raise DataError(str(err)) from err
    unknown = sorted(set(lengths or {}) - set(TASK_NAMES))
    if unknown:
        raise DataError(f"lengths: unknown tasks {unknown}; known tasks: {', '.join(TASK_NAMES)}")
    for task, length in (lengths or {}).items():
        if not isinstance(length, int) or isinstance(length, bool) or length < MIN_LENGTHS[task]:
            raise DataError(f"lengths.{task}: the {task} layout needs at least {MIN_LENGTHS[task]} bases, "
                            f"got {length!r}")
    if not isinstance(public_bases, int) or isinstance(public_bases, bool) or public_bases < 0:
        raise DataError(f"public_bases: expected a non-negative integer, got {public_bases!r}")
    if variants_per_species is not None and (not isinstance(variants_per_species, int) or variants_per_species < 0):
        raise DataError(f"variants_per_species: expected a non-negative integer, got {variants_per_species!r}")
    shares = np.asarray(split_fractions, dtype=float)
    if shares.shape != (3,) or (shares < 0).any() or not np.isclose(shares.sum(), 1.0):
        raise DataError(f"split_fractions: expected three non-negative shares summing to 1, got {list(split_fractions)}")
    splits = sum(1 for f in split_fractions if f > 0)
    small = [s.name for s in specs if round(n_per_task * s.size) < splits]
    if small:
        raise DataError(f"institutions {small}: n_per_task * size gives fewer records than the {splits} splits")
    return {**DEFAULT_LENGTHS, **(lengths or {})}


def write_federation_data(*, institutions: Sequence[InstitutionSpec | Mapping], out_dir: str | os.PathLike,
                          seed: int, n_per_task: int, central_n: int, lengths: Mapping[str, int] | None = None,
                          difficulty: float = DEFAULT_DIFFICULTY, variants_per_species: int | None = None,
                          split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                          public_bases: int = DEFAULT_PUBLIC_BASES, progress: bool = True) -> dict:
    """Generate every institution's train/val/test data, the central test sets, variant pairs and
    the manifest (layout in the module docstring).

    Args:
        institutions: :class:`InstitutionSpec`, mappings with its field names, or config objects
            with those attributes (see :meth:`InstitutionSpec.from_value`).
        out_dir: output directory; created if missing, refused if non-empty and not ours.
        seed: master seed; each (institution, task) and central set derives its own from it.
        n_per_task: records per task at an institution of size 1 (before the split).
        central_n: central test records per task and species.
        lengths: window length per task (default ``synthetic.DEFAULT_LENGTHS``).
        difficulty: generator difficulty in [0, 1] (see ``synthetic.Difficulty``).
        variants_per_species: variant pairs per species that has promoter/enhancer/splice data
            (default ``central_n``; 0 writes a variants.tsv with only its header).
        split_fractions: train, validation, test shares.
        public_bases: bases of unlabelled public sequence per species (``public/<species>.fa``:
            species background with the tasks' elements planted in it, for pre-training; 0 writes
            none).
        progress: show a rich progress bar on stderr.

    Returns:
        The manifest, as written to ``out_dir/manifest.yaml``.

    Raises:
        DataError: a bad institution (name, species, task the species lacks, size), duplicate
            names, non-positive counts, a negative seed, unknown tasks or too-short windows in
            ``lengths``, a difficulty outside [0, 1], bad split fractions, a negative
            ``public_bases``, or an ``out_dir`` that
            is not ours. Everything is checked before the first file is written.
    """
    specs = [InstitutionSpec.from_value(v) for v in institutions]
    task_lengths = _check_arguments(specs, seed=seed, n_per_task=n_per_task, central_n=central_n, lengths=lengths,
                                    difficulty=difficulty, variants_per_species=variants_per_species,
                                    split_fractions=split_fractions, public_bases=public_bases)
    out = Path(out_dir)
    _check_out_dir(out)
    species = list(dict.fromkeys(s.species for s in specs))
    tasks = [t for t in TASK_NAMES if any(t in s.tasks for s in specs)]
    n_variants = central_n if variants_per_species is None else variants_per_species
    plan = _Plan(out, seed, task_lengths, difficulty, split_fractions)
    steps = (sum(len(s.tasks) for s in specs) + sum(len(_central_species(t, species)) for t in tasks)
             + len(species) + (len(species) if public_bases else 0))
    console = Console(stderr=True)
    with Progress(console=console, disable=not progress, transient=False) as bar:
        job = bar.add_task("generating federation data", total=steps)
        counts = {s.name: plan.institution(s, n_per_task, lambda: bar.advance(job)) for s in specs}
        central = {t: plan.central(t, _central_species(t, species), central_n, lambda: bar.advance(job))
                   for t in tasks}
        n_pairs = plan.variants(species, n_variants, lambda: bar.advance(job))
        public = {name: plan.public(name, public_bases, lambda: bar.advance(job))
                  for name in species} if public_bases else {}
    manifest = _manifest(specs, species, tasks, counts, central, n_pairs, public, seed=seed, n_per_task=n_per_task,
                         central_n=central_n, lengths=task_lengths, difficulty=difficulty,
                         variants_per_species=n_variants, split_fractions=split_fractions,
                         public_bases=public_bases)
    _write_text(out / MANIFEST, yaml.safe_dump(manifest, sort_keys=False))
    return manifest


def _central_species(task: str, species: list[str]) -> list[str]:
    return [s for s in species if task in get_species(s).tasks]


@dataclass(frozen=True)
class _Plan:
    """What every generation step shares: where to write, the master seed and the parameters."""

    out: Path
    seed: int
    lengths: dict[str, int]
    difficulty: float
    split_fractions: Sequence[float]

    def _generate(self, *, task, species, n, seed, positive_fraction=0.5, id_prefix) -> SyntheticSet:
        try:
            return generate(task=task, species=species, n=n, seed=seed, length=self.lengths[task],
                            difficulty=self.difficulty, positive_fraction=positive_fraction, id_prefix=id_prefix)
        except SyntheticError as err:
            raise DataError(f"{id_prefix.rstrip('-')}: {err}") from err

    def institution(self, spec: InstitutionSpec, n_per_task: int, advance) -> dict[str, dict[str, int]]:
        counts = {}
        for task in spec.tasks:
            data = self._generate(task=task, species=spec.species, n=int(round(n_per_task * spec.size)),
                                  seed=_derived_seed(self.seed, spec.name, task),
                                  positive_fraction=spec.positive_fraction, id_prefix=f"{spec.name}-{task}-")
            splits = split_train_val_test(data.records, fractions=self.split_fractions,
                                          seed=_derived_seed(self.seed, spec.name, task, "split"))
            for split_name, records in zip(("train", "val", "test"), splits, strict=True):
                write_records(self.out / spec.name / task / f"{split_name}.tsv", records,
                              per_position=task == "splice")
            counts[task] = dict(zip(("train", "val", "test"), map(len, splits), strict=True))
            advance()
        return counts

    def central(self, task: str, species: list[str], n: int, advance) -> dict:
        sets = []
        for name in species:
            seed = _derived_seed(self.seed, CENTRAL, task, name)
            sets.append(self._generate(task=task, species=name, n=n, seed=seed, id_prefix=f"{CENTRAL}-{task}-{name}-"))
            advance()
        records = [r for data in sets for r in data.records]
        write_records(self.out / CENTRAL / task / "test.tsv", records, per_position=task == "splice")
        if task != "splice":
            rows = [f"{r.id}\t{p:.4f}\n" for data in sets for r, p in zip(data.records, data.oracle, strict=True)]
            _write_text(self.out / CENTRAL / task / "oracle.tsv", "id\toracle\n" + "".join(rows))
        oracle = {name: {k: round(v, 4) for k, v in data.oracle_metrics().items()}
                  for name, data in zip(species, sets, strict=True)}
        return {"n": len(records), "species": species, "oracle": oracle}

    def variants(self, species: list[str], n: int, advance) -> int:
        pairs = []
        for name in species:
            if n and any(t in get_species(name).tasks for t in VARIANT_TASKS):
                seed = _derived_seed(self.seed, "variants", name)
                pairs += generate_variant_pairs(species=name, n=n, seed=seed, difficulty=self.difficulty,
                                                id_prefix=f"variant-{name}-")
            advance()
        _write_variants(self.out / "variants.tsv", pairs)
        return len(pairs)

    def public(self, species: str, n_bases: int, advance) -> dict:
        """``public/<species>.fa``: :func:`public_sequence` cut into records of
        ``PUBLIC_RECORD_BASES``, with its own derived seed (disjoint from every institution's)."""
        sequence = public_sequence(species=species, n_bases=n_bases, seed=_derived_seed(self.seed, PUBLIC, species),
                                   lengths=self.lengths, difficulty=self.difficulty)
        records = [sequence[i : i + PUBLIC_RECORD_BASES] for i in range(0, len(sequence), PUBLIC_RECORD_BASES)]
        lines = []
        for number, record in enumerate(records, start=1):
            lines.append(f">{species}-public-{number} synthetic {species} public sequence\n")
            lines += [record[i : i + _FASTA_WIDTH] + "\n" for i in range(0, len(record), _FASTA_WIDTH)]
        path = f"{PUBLIC}/{species}.fa"
        _write_text(self.out / path, "".join(lines))
        advance()
        return {"path": path, "bases": len(sequence), "records": len(records)}


def public_sequence(*, species: str, n_bases: int, seed: int, lengths: Mapping[str, int],
                    difficulty: float = DEFAULT_DIFFICULTY) -> str:
    """Unlabelled sequence of one species as a genome would hold it: stretches of the species'
    Markov background (100-700 bases) alternating with the elements its tasks plant (promoters,
    enhancer motif clusters, ORFs, splice sites: the generator's positive windows, on a random
    strand), so masked-base prediction meets the same motifs the tasks depend on.

    Args:
        species: a species name or alias.
        n_bases: length of the result.
        seed: seed of everything drawn here (elements use seeds derived from it).
        lengths: window length per task of the planted elements.
        difficulty: generator difficulty of the elements.

    Returns:
        ``n_bases`` upper-case bases.
    """
    profile = get_species(species)
    rng = np.random.default_rng(seed)
    tasks = [t for t in TASK_NAMES if t in profile.tasks]
    n_elements = n_bases // (400 + int(np.mean([lengths[t] for t in tasks]))) + 1
    elements = []
    for task in tasks:
        data = generate(task=task, species=profile.name, n=-(-n_elements // len(tasks)),
                        seed=_derived_seed(seed, task), length=lengths[task], difficulty=difficulty,
                        positive_fraction=1.0)
        keep = [True] * len(data.records) if data.planted is None else (np.asarray(data.planted) == 1).tolist()
        elements += [to_codes(r.sequence) for r, k in zip(data.records, keep, strict=True) if k]
    order = rng.permutation(len(elements))
    gaps = sample_markov(rng, species_background(profile), n=len(elements) + 1, length=700)
    gap_lengths = rng.integers(100, 701, len(elements) + 1)
    flips = rng.random(len(elements)) < 0.5
    pieces, total = [], 0
    for k, index in enumerate(order):
        element = reverse_complement(elements[index]) if flips[k] else elements[index]
        pieces += [gaps[k, : gap_lengths[k]], element]
        total += int(gap_lengths[k]) + element.size
        if total >= n_bases:
            break
    else:  # every element used and still short: end in background
        pieces.append(sample_markov(rng, species_background(profile), n=1, length=n_bases - total)[0])
    return to_string(np.concatenate(pieces)[:n_bases])


def _manifest(specs, species, tasks, counts, central, n_pairs, public, **parameters) -> dict:
    parameters["lengths"] = {t: parameters["lengths"][t] for t in TASK_NAMES}
    parameters["split_fractions"] = [float(f) for f in parameters["split_fractions"]]
    parameters["difficulty"] = float(parameters["difficulty"])
    parameters["label_noise"] = round(Difficulty(parameters["difficulty"]).label_noise, 6)
    return {
        "format": FORMAT,
        "seed": parameters.pop("seed"),
        "generator": parameters,
        "species": species,
        "tasks": tasks,
        "institutions": [{**asdict(s), "tasks": list(s.tasks), "counts": counts[s.name]} for s in specs],
        CENTRAL: {t: {"path": f"{CENTRAL}/{t}/test.tsv", **central[t]} for t in tasks},
        "variants": {"path": "variants.tsv", "n": n_pairs},
        PUBLIC: public,
    }


def manifest_differences(manifest: Mapping, *, institutions: Sequence[InstitutionSpec | Mapping], seed: int,
                         n_per_task: int, central_n: int, lengths: Mapping[str, int] | None = None,
                         difficulty: float = DEFAULT_DIFFICULTY, public_bases: int | None = None) -> list[str]:
    """What differs between data on disk (its manifest) and the data these arguments would generate;
    an empty list means the data on disk is exactly what they ask for. ``public_bases`` is compared
    only when given (data written before public sequence existed has none)."""
    generator = manifest.get("generator", {})
    wanted = {"seed": (manifest.get("seed"), seed), "n_per_task": (generator.get("n_per_task"), n_per_task),
              "central_n": (generator.get("central_n"), central_n),
              "difficulty": (generator.get("difficulty"), float(difficulty))}
    if public_bases is not None:
        wanted["public_bases"] = (generator.get("public_bases", 0), public_bases)
    for task, length in (lengths or {}).items():
        wanted[f"lengths.{task}"] = (generator.get("lengths", {}).get(task), length)
    differences = [f"{key}: on disk {have!r}, asked for {want!r}" for key, (have, want) in wanted.items()
                   if have != want]
    specs = [InstitutionSpec.from_value(v) for v in institutions]
    on_disk = {i.get("name"): (i.get("species"), list(i.get("tasks", [])), i.get("size"))
               for i in manifest.get("institutions", [])}
    asked = {s.name: (s.species, list(s.tasks), s.size) for s in specs}
    if on_disk != asked:
        differences.append(f"institutions: on disk {sorted(on_disk)}, asked for {sorted(asked)} "
                           "(or their species, tasks or sizes differ)")
    return differences
