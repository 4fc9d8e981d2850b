"""Privacy audit: does a model trained on an institution's data remember individual records?

Two measurements, on one sequence task (promoter by default), with and without DP-SGD:

* **Exposure** (Carlini et al. 2019, "The Secret Sharer"). A canary is a random 12-bp secret at a
  fixed position with a fixed label, written into ``repeats`` of the institution's training sequences
  whose own class is another one; the copies are added to a *copy* of the training data and their
  unmodified hosts stay in it. The secret is then the only thing the copies share that explains their
  label: a model that fits them has memorised those 12 bases. After training, the canary's loss (for
  its label, averaged over a few of its hosts) is ranked among the losses of the same hosts with
  ``candidates`` other random 12-mers at the same place; ``exposure = log2(N) - log2(rank)`` with
  N = candidates + 1 (rank 1: exposure log2 N, the most a sampled candidate set can show).
  Never-seen canaries, built the same way but never trained on, give what chance gives in the same
  model (rank uniform: mean exposure ``chance_exposure(N)``, about log2 e = 1.44 bits); the untrained
  initial model gives the secrets' scores before any training.
* **Membership inference** (loss-threshold attack, Yeom et al. 2018): the AUROC of ``-loss`` for
  members (the training sequences incl. the canaries) against non-members (the task's held-out
  val/test sequences); 0.5 is chance. ``canary_auc`` is the same attack, planted vs never-seen canaries.

DP at an ε bounds what any of these attacks can gain per record; a canary repeated R times is a group
of R records (group privacy: R·ε), so the audit shows what the guarantee means in practice, it does
not prove it. Nothing of the institution is touched: its data is read, the copy with canaries goes
to ``out_dir/data``, σ is planned and spent in scratch ledgers under ``out_dir/state``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from client.privacy.ledger import PrivacyLedger, plan_noise_multiplier
from client.trainer import (
    resolve_device,
    sample_rate,
    seed_everything,
    steps_per_round,
    train_task_dp,
    train_task_plain,
)
from common.config import InstitutionConfig, TrainingConfig
from common.data.dataset import GenomicDataset, Record, collate
from common.data.institution import load_institution_data
from common.data.readers import MissingFileError, load_dataset
from common.data.writers import write_split_tables
from common.model import GenomicTransformer, ModelConfig
from common.tasks import get_task
from common.tokenizer import encode

CANARY_BASES = 12  # the secret's length: the published DNA-model canary anchor plants 12-mers
BASES = "ACGT"
CANARY_REPORT_FILE = "audit.json"  # the canary audit's report (the server's event log is audit.jsonl)
SCORE_HOSTS = 4  # hosts a secret's loss is averaged over: enough to steady it, few enough to stay cheap
NO_DP, UNTRAINED = "no-dp", "untrained"
# The default audited model: one attention layer over a motif stem, small enough that training it
# twice and scoring tens of thousands of candidate sequences takes a few minutes on one CPU core.
AUDIT_MODEL = ModelConfig(d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0, max_len=512, motif_kernel=9)


class AuditError(ValueError):
    """An audit that cannot run as asked (task, sizes, output directory); says what and why."""


@dataclass(frozen=True)
class AuditSettings:
    """What to plant and how to train.

    task: the sequence task to plant canaries in (None: promoter if held, else the first sequence
        task the institution holds). canaries: planted canaries (and as many never-seen ones).
    repeats: copies of each canary in the training data. epochs: passes over the training data.
    candidates: random 12-mers each canary is ranked against. epsilons: DP budgets to audit
    (None: the institution's own). seed: model init, data order, canaries (never the DP noise).
    """

    task: str | None = None
    canaries: int = 16
    repeats: int = 8
    epochs: float = 40.0  # 8 copies x 40 epochs: each secret seen 320 times, as in the published anchor
    candidates: int = 255  # exposure up to log2(256) = 8 bits; chance is about 1.44
    epsilons: tuple[float, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("canaries", "repeats", "candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AuditError(f"{name}: expected a positive integer, got {value!r}")
        if not self.epochs > 0:
            raise AuditError(f"epochs: expected a positive number, got {self.epochs!r}")
        if self.epsilons is not None and (not self.epsilons or any(not e > 0 for e in self.epsilons)):
            raise AuditError(f"epsilons: expected positive budgets, got {self.epsilons!r}")


@dataclass(frozen=True)
class Canary:
    """A secret 12-mer at a fixed position with a fixed label, planted in several host sequences."""

    id: str
    secret: str
    position: int
    label: int
    host_ids: tuple[str, ...]
    hosts: tuple[str, ...]

    def copies(self) -> list[str]:
        """The canary as trained: each host with the secret written over ``position``."""
        return [plant(host=h, secret=self.secret, position=self.position) for h in self.hosts]


@dataclass
class AuditData:
    """The audited task's data: training copy with canaries, held-out records, both canary sets."""

    task: str
    train: GenomicDataset
    held_out: GenomicDataset
    planted: list[Canary]
    never_seen: list[Canary]
    copy_dir: Path


@dataclass
class CanaryScores:
    """One canary set's ranks and exposures in one model."""

    ranks: list[float]
    exposures: list[float]
    losses: list[float]

    def summary(self) -> dict:
        exposures = np.asarray(self.exposures)
        return {"exposure_mean": float(exposures.mean()), "exposure_max": float(exposures.max()),
                "ranked_first": float(np.mean(np.asarray(self.ranks) == 1)), "ranks": self.ranks,
                "exposures": [round(e, 4) for e in self.exposures]}


@dataclass
class RunReport:
    """One model's audit: how it was trained and what the attacks found.

    mode: ``untrained`` (the shared initial weights: what the secrets score before any training),
    ``no-dp`` or ``dp``."""

    mode: str
    epsilon_budget: float | None
    epsilon: float | None
    noise_multiplier: float
    steps: int
    train_loss: float | None
    planted: dict
    never_seen: dict
    exposure_p_value: float
    canary_auc: float
    mia_auc: float
    train_seconds: float
    score_seconds: float
    ledger: str | None = None


# -- canaries and exposure: pure functions


def plant(*, host: str, secret: str, position: int) -> str:
    """``host`` with ``secret`` written over ``host[position:position + len(secret)]`` (same length)."""
    if not 0 <= position <= len(host) - len(secret):
        raise AuditError(f"canary position {position} does not fit {len(secret)} bases into a "
                         f"{len(host)}-base sequence")
    return host[:position] + secret + host[position + len(secret):]


def random_secrets(*, count: int, rng: np.random.Generator, exclude: Sequence[str] = ()) -> list[str]:
    """``count`` distinct random 12-mers, none of them in ``exclude``."""
    taken, secrets = set(exclude), []
    while len(secrets) < count:
        secret = "".join(rng.choice(list(BASES), size=CANARY_BASES))
        if secret not in taken:
            taken.add(secret)
            secrets.append(secret)
    return secrets


def make_canaries(*, records: Sequence[Record], count: int, repeats: int, num_classes: int,
                  rng: np.random.Generator, prefix: str) -> list[Canary]:
    """``count`` canaries, each a random secret at a random position with a fixed label, in
    ``repeats`` distinct host records whose own label differs from it.

    Every copy contradicts its host's class, and the unmodified hosts stay in the training data, so
    the secret is the only thing the copies share that explains their label: fitting them means
    memorising it. Labels cycle through the classes so the canaries are balanced.

    Raises:
        AuditError: fewer than ``repeats`` records of another class, or records too short for a secret.
    """
    shortest = min(len(r.sequence) for r in records)
    if shortest < CANARY_BASES:
        raise AuditError(f"a {shortest}-base record cannot hold a {CANARY_BASES}-bp canary")
    labels = np.asarray([int(r.label) for r in records])
    secrets = random_secrets(count=count, rng=rng)
    canaries = []
    for i, secret in enumerate(secrets):
        label = i % num_classes
        pool = np.flatnonzero(labels != label)
        if pool.size < repeats:
            raise AuditError(f"{pool.size} training records of a class other than {label} cannot host "
                             f"{repeats} copies of a canary")
        hosts = [records[j] for j in rng.choice(pool, size=repeats, replace=False)]
        position = int(rng.integers(0, shortest - CANARY_BASES + 1))
        canaries.append(Canary(id=f"{prefix}{i}", secret=secret, position=position, label=label,
                               host_ids=tuple(h.id for h in hosts), hosts=tuple(h.sequence for h in hosts)))
    return canaries


def exposure_from_losses(*, canary_loss: float, candidate_losses: Sequence[float] | np.ndarray
                         ) -> tuple[float, float]:
    """Rank and exposure of a canary among candidates (Carlini et al. 2019, with sampled candidates).

    Args:
        canary_loss: the model's loss on the canary with its true secret.
        candidate_losses: the losses of the same sequence with the other candidate secrets.

    Returns:
        ``(rank, exposure)``: rank = 1 + the number of candidates with a lower loss + half the number
        with an equal one (a mid-rank: a model that cannot tell the secrets apart gets rank (N + 1)/2,
        not 1); exposure = log2(N) - log2(rank), N = candidates + 1.

    Raises:
        AuditError: no candidates, or a loss that is not finite.
    """
    candidates = np.asarray(candidate_losses, dtype=np.float64)
    if candidates.size == 0 or not np.isfinite(candidates).all() or not math.isfinite(canary_loss):
        raise AuditError("exposure needs at least one candidate and finite losses")
    rank = 1 + int((candidates < canary_loss).sum()) + 0.5 * int((candidates == canary_loss).sum())
    return rank, math.log2(candidates.size + 1) - math.log2(rank)


def chance_exposure(candidates: int) -> float:
    """Mean exposure of a secret the model never saw: rank uniform on 1..N, N = candidates + 1."""
    n = candidates + 1
    return math.log2(n) - math.lgamma(n + 1) / (n * math.log(2))


def membership_auc(*, member_losses: Sequence[float], nonmember_losses: Sequence[float]) -> float:
    """AUROC of the loss-threshold attack: score ``-loss``, members positive (0.5 = chance)."""
    members, nonmembers = np.asarray(member_losses), np.asarray(nonmember_losses)
    if members.size == 0 or nonmembers.size == 0:
        raise AuditError("membership inference needs members and non-members")
    labels = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    return float(roc_auc_score(labels, -np.r_[members, nonmembers]))


# -- scoring a trained model


@torch.no_grad()
def sequence_losses(model: GenomicTransformer, *, tokens: torch.Tensor, labels: torch.Tensor, task: str,
                    device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Per-sequence cross-entropy of ``labels`` under ``model`` (eval mode), ``float64 [N]``."""
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, len(tokens), batch_size):
        logits = model(tokens[start:start + batch_size].to(device), task).logits.float()
        losses.append(F.cross_entropy(logits, labels[start:start + batch_size].to(device), reduction="none"))
    model.train(was_training)
    return torch.cat(losses).double().cpu().numpy()


def dataset_losses(model: GenomicTransformer, dataset: GenomicDataset, *, device: torch.device) -> np.ndarray:
    tokens, labels = collate([dataset[i] for i in range(len(dataset))])
    return sequence_losses(model, tokens=tokens, labels=labels, task=dataset.task.name, device=device)


def score_canary(model: GenomicTransformer, canary: Canary, *, candidates: Sequence[str], task: str,
                 device: torch.device) -> tuple[float, float, float]:
    """``(rank, exposure, loss)`` of one canary against ``candidates`` written at its position.

    A secret's loss is its mean loss over the canary's first ``SCORE_HOSTS`` hosts."""
    secrets = np.stack([encode(s) for s in (canary.secret, *candidates)])  # [1 + candidates, 12]
    window = slice(canary.position, canary.position + CANARY_BASES)
    total = np.zeros(len(secrets))
    hosts = canary.hosts[:SCORE_HOSTS]
    for host in hosts:
        tokens = torch.from_numpy(encode(host)).repeat(len(secrets), 1)  # [1 + candidates, L]
        tokens[:, window] = torch.from_numpy(secrets)
        labels = torch.full((len(secrets),), canary.label, dtype=torch.int64)
        total += sequence_losses(model, tokens=tokens, labels=labels, task=task, device=device)
    losses = total / len(hosts)
    rank, exposure = exposure_from_losses(canary_loss=float(losses[0]), candidate_losses=losses[1:])
    return rank, exposure, float(losses[0])


def score_canaries(model: GenomicTransformer, canaries: Sequence[Canary], *, candidates: int, task: str,
                   device: torch.device, seed: int) -> CanaryScores:
    """Rank every canary; candidate secrets come from ``seed`` so every model sees the same ones."""
    scores = CanaryScores([], [], [])
    for i, canary in enumerate(canaries):
        rng = np.random.default_rng([seed, i])
        others = random_secrets(count=candidates, rng=rng, exclude=[canary.secret])
        rank, exposure, loss = score_canary(model, canary, candidates=others, task=task, device=device)
        scores.ranks.append(rank)
        scores.exposures.append(exposure)
        scores.losses.append(loss)
    return scores


# -- data: a copy of the institution's task with canaries


def choose_task(config: InstitutionConfig, task: str | None) -> str:
    """The task to audit: the one asked for, else promoter if held, else the first sequence task."""
    if task is not None:
        if task not in config.tasks:
            raise AuditError(f"institution {config.name} holds no {task!r} data; it holds {', '.join(config.tasks)}")
        if get_task(task).per_position:
            raise AuditError(f"task {task!r} is per-position; canaries need a sequence task with one label "
                             "per sequence")
        return task
    sequence_tasks = [t for t in config.tasks if not get_task(t).per_position]
    if not sequence_tasks:
        raise AuditError(f"institution {config.name} holds no sequence task (only {', '.join(config.tasks)})")
    return "promoter" if "promoter" in sequence_tasks else sequence_tasks[0]


def check_separate(*, scratch: Path, real: Path | None, what: str) -> None:
    """Refuse a scratch directory that is, holds or lies inside the institution's own ``real`` one."""
    if real is None:
        return
    scratch, real = scratch.resolve(), real.resolve()
    if scratch == real or real in scratch.parents or scratch in real.parents:
        raise AuditError(f"output {scratch} overlaps the institution's {what} {real}; choose an --out "
                         "outside it (the audit never writes to the institution's own files)")


def _records(dataset: GenomicDataset) -> list[Record]:
    return [Record(dataset.ids[i], dataset.sequences[i], int(dataset.labels[i]), dataset.species[i])
            for i in range(len(dataset))]


def _held_out(config: InstitutionConfig, task: str, max_len: int) -> list[Record]:
    records = []
    for split in ("val", "test"):
        try:
            records += _records(load_dataset(config.data_dir / task, task=task, split=split,
                                             species=config.species, max_len=max_len))
        except MissingFileError:
            continue  # an institution may keep only one held-out split; one is enough
    if not records:
        raise AuditError(f"institution {config.name}: no held-out ({task}/val or test) records for "
                         "membership inference")
    return records


def prepare_data(*, config: InstitutionConfig, task: str, settings: AuditSettings, copy_dir: Path,
                 max_len: int) -> AuditData:
    """Read the task's data, write the copy with planted canaries to ``copy_dir``, read it back.

    Raises:
        AuditError: too few training records for the canaries' hosts, or ``copy_dir`` overlapping
            the institution's data.
    """
    check_separate(scratch=copy_dir, real=config.data_dir, what="data directory")
    real = load_institution_data(config.model_copy(update={"tasks": (task,)}), split="train", max_len=max_len)
    train = _records(real[task])
    rng = np.random.default_rng(settings.seed)
    shape = {"records": train, "count": settings.canaries, "repeats": settings.repeats,
             "num_classes": get_task(task).num_classes, "rng": rng}
    planted = make_canaries(**shape, prefix="canary-")
    never_seen = make_canaries(**shape, prefix="never-seen-")
    copies = [Record(f"{c.id}-copy{j}", sequence, c.label, config.species)
              for c in planted for j, sequence in enumerate(c.copies())]
    held_out = _held_out(config, task, max_len)
    write_split_tables(copy_dir / task, {"train": train + copies, "test": held_out})
    copied = config.model_copy(update={"data_dir": copy_dir, "tasks": (task,)})
    return AuditData(task, load_institution_data(copied, split="train", max_len=max_len)[task],
                     load_institution_data(copied, split="test", max_len=max_len)[task],
                     planted, never_seen, copy_dir)


# -- training the two (or more) models


def planned_sigma(*, config: InstitutionConfig, epsilon: float, examples: int, training: TrainingConfig) -> float:
    """σ that makes ``training.local_epochs`` epochs over ``examples`` records spend ``epsilon``."""
    q = sample_rate(examples=examples, batch_size=training.batch_size)
    steps = steps_per_round(examples=examples, training=training)
    return plan_noise_multiplier(budget_epsilon=epsilon, delta=config.privacy.delta, sample_rate=q, steps=steps,
                                 accountant=config.privacy.accountant)


def train_copy(initial: GenomicTransformer, data: AuditData, *, training: TrainingConfig, sigma: float | None,
               max_grad_norm: float, accountant: str, device: torch.device, seed: int):
    """Train a copy of ``initial`` on the canaried data (DP when ``sigma`` is given); returns
    ``(model, task round)``. The same seed gives both models the same init and (non-DP) data order."""
    model = copy.deepcopy(initial).to(device).train()
    seed_everything(seed)
    if sigma is None:
        return model, train_task_plain(model, data.train, training=training, device=device)
    return model, train_task_dp(model, data.train, training=training, noise_multiplier=sigma,
                                max_grad_norm=max_grad_norm, accountant=accountant, device=device)


def assess(model: GenomicTransformer, data: AuditData, *, candidates: int, device: torch.device,
           seed: int) -> dict:
    """Exposure of both canary sets, their AUC, and the membership-inference AUC of the task."""
    planted = score_canaries(model, data.planted, candidates=candidates, task=data.task, device=device, seed=seed)
    never_seen = score_canaries(model, data.never_seen, candidates=candidates, task=data.task, device=device,
                                seed=seed + 1)
    members = dataset_losses(model, data.train, device=device)  # canary copies included
    nonmembers = dataset_losses(model, data.held_out, device=device)
    p_value = mannwhitneyu(planted.exposures, never_seen.exposures, alternative="greater").pvalue
    return {"planted": planted.summary(), "never_seen": never_seen.summary(),
            "exposure_p_value": float(p_value),
            "canary_auc": membership_auc(member_losses=planted.losses, nonmember_losses=never_seen.losses),
            "mia_auc": membership_auc(member_losses=members, nonmember_losses=nonmembers)}


def _train_run(initial, data, *, config, settings, training, epsilon, state_root, device):
    """Train one model (no DP when ``epsilon`` is None); returns it and how it was trained."""
    start = time.perf_counter()
    privacy = config.privacy
    sigma = None if epsilon is None else planned_sigma(config=config, epsilon=epsilon, examples=len(data.train),
                                                       training=training)
    model, trained = train_copy(initial, data, training=training, sigma=sigma, max_grad_norm=privacy.max_grad_norm,
                                accountant=privacy.accountant, device=device, seed=settings.seed + 1)
    facts = {"mode": NO_DP if epsilon is None else "dp", "epsilon_budget": epsilon, "epsilon": None,
             "noise_multiplier": sigma or 0.0, "steps": trained.steps,
             # NaN when Poisson sampling drew only empty batches; JSON has no NaN
             "train_loss": trained.mean_loss if math.isfinite(trained.mean_loss) else None}
    if epsilon is not None:
        # A scratch ledger of its own: the audit's spending goes through the same accountant and
        # budget check as a real round, and never into the institution's ledger.
        ledger = PrivacyLedger.open(state_root / f"epsilon-{epsilon:g}", institution=config.name,
                                    budget_epsilon=epsilon, delta=privacy.delta, accountant=privacy.accountant)
        facts["epsilon"] = ledger.record_round(run_id="audit", round=1, segments=trained.segments).epsilon
        facts["ledger"] = str(ledger.path)
    return model, facts | {"train_seconds": round(time.perf_counter() - start, 1)}


def _assessed(model, data, facts: dict, *, settings, device) -> RunReport:
    start = time.perf_counter()
    found = assess(model, data, candidates=settings.candidates, device=device, seed=settings.seed + 2)
    return RunReport(**facts, **found, score_seconds=round(time.perf_counter() - start, 1))


def audit_institution(*, config: InstitutionConfig, out_dir: Path, settings: AuditSettings = AuditSettings(),
                      model_config: ModelConfig = AUDIT_MODEL, training: TrainingConfig | None = None,
                      progress: Callable[[str], None] = lambda message: None) -> dict:
    """Plant canaries in a copy of one task's training data, train without DP and with DP at each
    budget from the same init, and measure exposure and membership inference.

    Args:
        config: the institution (only read: its data, privacy δ/accountant/clip norm, budget, device).
        out_dir: where the data copy (``data/``), scratch ledgers (``state/<run>/``) and ``audit.json`` go.
        settings: canaries, repeats, epochs, candidates, budgets, seed.
        model_config: the model to audit (default: a tiny one, see ``AUDIT_MODEL``).
        training: local training settings (default: the institution's own, else the defaults);
            ``local_epochs`` is replaced by ``settings.epochs``.
        progress: called with one line per stage.

    Returns:
        The report written to ``out_dir/audit.json``: settings, record counts, chance exposure and one
        entry per trained model under ``runs``.

    Raises:
        AuditError: a task without sequence labels, too little data, or ``out_dir`` overlapping the
            institution's data or state directory.
        ConfigError, DataError: the institution's data cannot be read.
    """
    out_dir = Path(out_dir)
    state_root = out_dir / "state" / time.strftime("audit-%Y%m%dT%H%M%S")
    check_separate(scratch=state_root, real=config.state_dir, what="state directory")
    task = choose_task(config, settings.task)
    training = (training or config.training or TrainingConfig()).model_copy(update={"local_epochs": settings.epochs})
    device = resolve_device(config.device)
    data = prepare_data(config=config, task=task, settings=settings, copy_dir=out_dir / "data",
                        max_len=min(training.max_len, model_config.max_len))
    progress(f"{task}: {len(data.train)} training records ({settings.canaries} canaries x {settings.repeats} "
             f"copies), {len(data.held_out)} held out; copy in {data.copy_dir}")
    seed_everything(settings.seed)
    initial = GenomicTransformer(model_config, tasks=(task,))
    untrained = {"mode": UNTRAINED, "epsilon_budget": None, "epsilon": None, "noise_multiplier": 0.0,
                 "steps": 0, "train_loss": None, "train_seconds": 0.0}
    runs = [_assessed(initial, data, untrained, settings=settings, device=device)]
    progress(_progress_line(runs[-1]))
    for epsilon in (None, *(settings.epsilons or (config.privacy.epsilon,))):
        model, facts = _train_run(initial, data, config=config, settings=settings, training=training,
                                  epsilon=epsilon, state_root=state_root, device=device)
        runs.append(_assessed(model, data, facts, settings=settings, device=device))
        progress(_progress_line(runs[-1]))
    report = _report(config, task, settings, model_config, training, data, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CANARY_REPORT_FILE).write_text(json.dumps(report, indent=1, allow_nan=False))
    return report


def run_name(run: RunReport | dict) -> str:
    """``untrained``, ``no-dp`` or ``DP ε=7.93``."""
    run = asdict(run) if isinstance(run, RunReport) else run
    return run["mode"] if run["epsilon"] is None else f"DP ε={run['epsilon']:.2f}"


def _progress_line(run: RunReport) -> str:
    return (f"{run_name(run)}: exposure mean {run.planted['exposure_mean']:.2f} (never-seen "
            f"{run.never_seen['exposure_mean']:.2f}), MIA AUC {run.mia_auc:.3f}; "
            f"{run.train_seconds:.0f} s training, {run.score_seconds:.0f} s scoring")


def _report(config, task, settings, model_config, training, data, runs) -> dict:
    return {
        "institution": config.name, "task": task, "data_copy": str(data.copy_dir),
        "settings": {**asdict(settings), "task": task, "canary_bases": CANARY_BASES},
        "model": model_config.to_dict(), "training": training.model_dump(),
        "delta": config.privacy.delta, "accountant": config.privacy.accountant,
        "max_grad_norm": config.privacy.max_grad_norm,
        "records": {"train": len(data.train) - settings.canaries * settings.repeats,
                    "canary_copies": settings.canaries * settings.repeats, "held_out": len(data.held_out)},
        "max_exposure": math.log2(settings.candidates + 1),
        "chance_exposure": chance_exposure(settings.candidates),
        "canaries": [{k: v for k, v in asdict(c).items() if k != "hosts"} for c in data.planted],
        "runs": [asdict(run) for run in runs],
    }
