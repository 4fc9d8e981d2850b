"""Public pre-training: masked-base prediction on unlabelled reference FASTA, without DP.

Reference genomes are public, so the backbone learns the language of DNA here at no privacy cost;
the federation then fine-tunes it under DP from the checkpoint this writes. Plain PyTorch, run by
the coordinating site.

Recipe (BERT-style, single-nucleotide tokens): windows of ``length`` bases are cut from the FASTA
records (soft-masked lower case reads as sequence; windows with fewer than half real bases are
skipped); 15 % of each window's real bases are chosen, 80 % of those become ``<mask>``, 10 % a
random base, 10 % stay; the loss is cross-entropy over A, C, G, T at the chosen positions only.
Each training window is a random strand of a random training block, shifted by a random offset.
A fixed slice of blocks is held out (never trained on) to measure masked-base accuracy.

Everything random in step ``s`` is drawn from a generator seeded by ``(seed, s)``, so a run is
deterministic and ``resume`` continues it exactly: the same seed and total steps give the same
weights whether or not the run was interrupted.

Outputs under ``out_dir``::

    checkpoint/                    a helixfed checkpoint: the GenomicTransformer (the federation's
                                   tasks, heads as initialised) and, in its state, the pre-training
                                   settings, step and history; what ``model.init_checkpoint`` names
    pretrain-resume-<step>.pt      MLM head and AdamW state for ``resume`` (tensors only, loaded
                                   with weights_only=True; its sha256 is in the checkpoint's state)
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console

from common.atomic import atomic_write_bytes
from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.data.readers_common import Where, first_bad_base, line_of, require_file, unknown_base_error
from common.data.readers_fasta import fasta_entries
from common.logs import progress_bar
from common.model import GenomicTransformer, ModelConfig
from common.tokenizer import A_ID, MASK_ID, T_ID, SequenceError, encode

CHECKPOINT_DIR = "checkpoint"
RESUME_PREFIX = "pretrain-resume-"
STATE_KEY = "pretraining"
IGNORE = -100  # target of a position that is not scored
N_BASES = 4  # the head predicts A, C, G, T: token id - A_ID


class PretrainError(ValueError):
    """Pre-training that cannot run: a bad setting (named with its value), a FASTA without a usable
    window, or an output directory that does not fit ``resume``."""


@dataclass(frozen=True)
class PretrainSettings:
    """Every tunable of a pre-training run; validated on construction."""

    steps: int = 2000
    batch_size: int = 64
    length: int | None = None  # window length; None: the model's max_len
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05  # linear warm-up over this share of the steps, then cosine to 0
    mask_fraction: float = 0.15
    heldout_fraction: float = 0.05  # share of blocks held out for masked-base accuracy
    max_heldout: int = 256
    eval_every: int = 250
    checkpoint_every: int = 500
    seed: int = 0
    reverse_complement: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_heldout", "eval_every", "checkpoint_every"):
            _require(name, getattr(self, name), lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                     "a positive integer")
        _require("length", self.length, lambda v: v is None or (isinstance(v, int) and v >= 8),
                 "an integer >= 8 (or None for the model's max_len)")
        _require("seed", self.seed, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                 "a non-negative integer")
        _require("learning_rate", self.learning_rate, lambda v: v > 0, "a positive number")
        _require("weight_decay", self.weight_decay, lambda v: v >= 0, "a non-negative number")
        for name in ("warmup_fraction", "heldout_fraction"):
            _require(name, getattr(self, name), lambda v: 0 <= v < 1, "a number in [0, 1)")
        _require("mask_fraction", self.mask_fraction, lambda v: 0 < v < 1, "a number in (0, 1)")


def _require(name: str, value, valid, expected: str) -> None:
    if not valid(value):
        raise PretrainError(f"pretraining.{name}: expected {expected}, got {value!r}")


# --- the corpus ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenomeRecord:
    """One FASTA record as tokens (``uint8``, tokenizer ids)."""

    path: Path
    name: str
    tokens: np.ndarray


def read_genome(paths: list[str | Path]) -> list[GenomeRecord]:
    """Every record of every FASTA file (``.gz`` too), tokenised; lower case reads as sequence.

    Raises:
        MissingFileError: a file that does not exist (names it).
        ReaderError: an empty file, a malformed record, or a character that is not a base (file,
            line, record and character).
    """
    records = []
    for path in paths:
        path = require_file(path, "FASTA file")
        for entry in fasta_entries(path):
            sequence = "".join(text for _, text in entry.lines)
            try:
                tokens = encode(sequence)
            except SequenceError as err:
                bad = first_bad_base(sequence)
                if bad is None:
                    raise
                raise unknown_base_error(sequence, bad, Where(path, line_of(entry.lines, bad), entry.word)) from err
            records.append(GenomeRecord(path, entry.word, tokens.astype(np.uint8)))
    return records


def _usable(window: np.ndarray) -> bool:
    """At least half of the window is real bases (not N, not padding)."""
    return int(((window >= A_ID) & (window <= T_ID)).sum()) * 2 >= window.size


class WindowCorpus:
    """Fixed-length windows of a genome: every record tiled into blocks of ``length`` bases (a
    record's last partial block is dropped), a seeded slice of usable blocks held out, the rest
    sampled for training with a random shift that never reaches into a held-out block."""

    def __init__(self, records: list[GenomeRecord], *, length: int, heldout_fraction: float,
                 max_heldout: int, seed: int):
        self.records, self.length = records, length
        blocks = [(r, start) for r, record in enumerate(records)
                  for start in range(0, record.tokens.size - length + 1, length)
                  if _usable(record.tokens[start : start + length])]
        if len(blocks) < 2:
            files = sorted({str(record.path) for record in records})
            raise PretrainError(f"{', '.join(files)}: {len(blocks)} usable window(s) of {length} bases; expected at "
                                f"least 2 (one to train on, one held out) with at least half of their bases A/C/G/T")
        order = np.random.default_rng([seed, 0x4E1D]).permutation(len(blocks))
        n_heldout = min(max(1, round(heldout_fraction * len(blocks))), max_heldout, len(blocks) - 1)
        self.heldout = sorted(blocks[i] for i in order[:n_heldout])
        self.training = sorted(blocks[i] for i in order[n_heldout:])
        self._heldout_set = set(self.heldout)

    def heldout_tokens(self) -> np.ndarray:
        """``int64 [H, length]``: the held-out windows, forward strand."""
        return np.stack([self.records[r].tokens[s : s + self.length] for r, s in self.heldout]).astype(np.int64)

    def training_batch(self, rng: np.random.Generator, batch_size: int, *, reverse_complement: bool) -> np.ndarray:
        """``int64 [B, length]``: random training blocks, each shifted by a random offset when the
        shifted window stays in its record, off held-out blocks and usable; random strand."""
        picks = rng.integers(0, len(self.training), batch_size)
        shifts = rng.integers(0, self.length, batch_size)
        flips = rng.random(batch_size) < 0.5
        rows = []
        for pick, shift, flip in zip(picks, shifts, flips, strict=True):
            r, start = self.training[pick]
            window = self._shifted(r, start, int(shift))
            rows.append(reverse_complement_tokens(window) if reverse_complement and flip else window)
        return np.stack(rows).astype(np.int64)

    def _shifted(self, r: int, start: int, shift: int) -> np.ndarray:
        tokens, moved = self.records[r].tokens, start + shift
        if shift and moved + self.length <= tokens.size and (r, start + self.length) not in self._heldout_set:
            window = tokens[moved : moved + self.length]
            if _usable(window):
                return window
        return tokens[start : start + self.length]


def reverse_complement_tokens(tokens: np.ndarray) -> np.ndarray:
    """The other strand of token ids: A<->T, C<->G, reversed; N, padding and specials unchanged."""
    tokens = np.asarray(tokens)
    is_base = (tokens >= A_ID) & (tokens <= T_ID)
    return np.where(is_base, A_ID + T_ID - tokens, tokens)[..., ::-1].copy()


# --- masking and the objective -------------------------------------------------------------------
def mask_tokens(tokens: np.ndarray, rng: np.random.Generator, *, fraction: float = 0.15
                ) -> tuple[np.ndarray, np.ndarray]:
    """BERT-style masking of real bases (A, C, G, T; never N or padding).

    ``round(fraction * n)`` of each row's ``n`` real bases are chosen (at least one when the row has
    any); each chosen base becomes ``<mask>`` with probability 0.8, a uniformly random base with 0.1,
    and stays with 0.1.

    Returns:
        ``(inputs, targets)``, both ``int64 [B, L]``: the masked tokens, and the original base
        (0..3 for A..T) at chosen positions, ``IGNORE`` (-100) everywhere else.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    real = (tokens >= A_ID) & (tokens <= T_ID)  # [B, L]
    n_chosen = np.where(real.any(axis=1), np.maximum(1, np.round(fraction * real.sum(axis=1))), 0)  # [B]
    keys = np.where(real, rng.random(tokens.shape), 2.0)  # non-bases sort last
    ranks = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")  # [B, L]
    chosen = ranks < n_chosen[:, None]
    action = rng.random(tokens.shape)
    random_bases = rng.integers(A_ID, T_ID + 1, tokens.shape)
    inputs = np.where(chosen & (action < 0.8), MASK_ID, tokens)
    inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_bases, inputs)
    targets = np.where(chosen, tokens - A_ID, IGNORE)
    return inputs, targets


class MaskedBaseHead(nn.Module):
    """Per-base representation ``[B, L, D]`` -> logits over A, C, G, T ``[B, L, 4]``. Used only in
    pre-training: it is not part of the federated model."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, N_BASES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def masked_base_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the chosen positions only (targets != IGNORE)."""
    return F.cross_entropy(logits.reshape(-1, N_BASES), targets.reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: GenomicTransformer, head: MaskedBaseHead, inputs: torch.Tensor, targets: torch.Tensor,
             *, batch_size: int) -> tuple[float, float]:
    """``(loss, accuracy)`` of masked-base prediction over every chosen position of a fixed set."""
    model.eval()
    head.eval()
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, inputs.shape[0], batch_size):
        logits = head(model.encode(inputs[start : start + batch_size]))  # [b, L, 4]
        target = targets[start : start + batch_size]
        scored = target != IGNORE
        total_loss += float(F.cross_entropy(logits[scored], target[scored], reduction="sum"))
        correct += int((logits[scored].argmax(dim=-1) == target[scored]).sum())
        count += int(scored.sum())
    return total_loss / max(count, 1), correct / max(count, 1)


# --- the run -------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    checkpoint: Path
    step: int
    history: list[dict]


def learning_rate(step: int, settings: PretrainSettings) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to 0 at ``steps``."""
    warmup = max(1, round(settings.warmup_fraction * settings.steps))
    if step < warmup:
        return settings.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return settings.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def is_pretrained(parameter_name: str) -> bool:
    """Pre-training updates the backbone: not the task heads (``heads.<task>.…``, kept as
    initialised) and not LoRA adapters (``…lora_a/lora_b…``, kept at their identity start)."""
    parts = parameter_name.split(".")
    return parts[0] != "heads" and not {"lora_a", "lora_b"} & set(parts)


def _optimizer(model: GenomicTransformer, head: MaskedBaseHead, settings: PretrainSettings) -> torch.optim.AdamW:
    """AdamW over the backbone (see :func:`is_pretrained`) and the MLM head; matrices decay,
    biases, norms and embeddings do not."""
    named = [(n, p) for n, p in model.named_parameters() if is_pretrained(n)]
    named += [(f"mlm.{n}", p) for n, p in head.named_parameters()]
    decay = [p for n, p in named if p.dim() >= 2 and "embedding" not in n]
    other = [p for n, p in named if not (p.dim() >= 2 and "embedding" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=settings.learning_rate, betas=(0.9, 0.98))


class _Run:
    """One pre-training run's model, MLM head, optimizer, corpus and output files."""

    def __init__(self, *, model_config: ModelConfig, tasks: tuple[str, ...], fasta: list[Path], out_dir: Path,
                 settings: PretrainSettings, device: str):
        if model_config.epigenetic_tracks:
            raise PretrainError(f"model.epigenetic_tracks: {model_config.epigenetic_tracks}; FASTA carries no "
                                "tracks, so pre-training needs a model with epigenetic_tracks 0")
        self.length = settings.length or model_config.max_len
        if self.length > model_config.max_len:
            raise PretrainError(f"pretraining.length: {self.length} exceeds model.max_len {model_config.max_len}")
        self.settings, self.out, self.device = settings, out_dir, torch.device(device)
        self.fasta = [str(Path(f)) for f in fasta]
        self.corpus = WindowCorpus(read_genome(fasta), length=self.length, heldout_fraction=settings.heldout_fraction,
                                   max_heldout=settings.max_heldout, seed=settings.seed)
        torch.manual_seed(settings.seed)
        self.model = GenomicTransformer(model_config, tasks=tasks).to(self.device)
        self.head = MaskedBaseHead(model_config.d_model).to(self.device)
        self.optimizer = _optimizer(self.model, self.head, settings)
        inputs, targets = mask_tokens(self.corpus.heldout_tokens(), np.random.default_rng([settings.seed, 0xE7A1]),
                                      fraction=settings.mask_fraction)
        self.heldout = (torch.from_numpy(inputs).to(self.device), torch.from_numpy(targets).to(self.device))
        self.step, self.history = 0, []

    # the identity of the data stream: resuming with other values would not continue the same run
    def _identity(self) -> dict:
        s = self.settings
        return {"fasta": self.fasta, "length": self.length, "batch_size": s.batch_size, "seed": s.seed,
                "mask_fraction": s.mask_fraction, "heldout_fraction": s.heldout_fraction,
                "max_heldout": s.max_heldout, "reverse_complement": s.reverse_complement}

    def train_step(self) -> float:
        s = self.settings
        rng = np.random.default_rng([s.seed, self.step])
        tokens = self.corpus.training_batch(rng, s.batch_size, reverse_complement=s.reverse_complement)
        inputs, targets = mask_tokens(tokens, rng, fraction=s.mask_fraction)
        torch.manual_seed(_step_seed(s.seed, self.step))  # dropout
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, s)
        self.model.train()
        self.head.train()
        logits = self.head(self.model.encode(torch.from_numpy(inputs).to(self.device)))  # [B, L, 4]
        loss = masked_base_loss(logits, torch.from_numpy(targets).to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def evaluate(self) -> tuple[float, float]:
        return evaluate(self.model, self.head, *self.heldout, batch_size=self.settings.batch_size)

    def save(self) -> Path:
        resume_file = self.out / f"{RESUME_PREFIX}{self.step:08d}.pt"
        buffer = _tensor_file({"mlm_head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()})
        atomic_write_bytes(resume_file, buffer)
        state = {STATE_KEY: {**self._identity(), "step": self.step, "steps": self.settings.steps,
                             "settings": asdict(self.settings), "differential_privacy": False,
                             "resume_file": resume_file.name, "resume_sha256": hashlib.sha256(buffer).hexdigest(),
                             "heldout_windows": len(self.corpus.heldout), "history": self.history}}
        path = save_checkpoint(self.out / CHECKPOINT_DIR, weights=self.model.state_dict(),
                               model_config=self.model.config, tasks=self.model.tasks, round=0, state=state)
        for old in self.out.glob(f"{RESUME_PREFIX}*.pt"):  # the checkpoint now names the new one
            if old.name != resume_file.name:
                old.unlink(missing_ok=True)
        return path

    def restore(self) -> None:
        path = self.out / CHECKPOINT_DIR
        checkpoint = load_checkpoint(path)
        saved = checkpoint.state.get(STATE_KEY)
        if not isinstance(saved, dict):
            raise PretrainError(f"{path}: not a pre-training checkpoint (no {STATE_KEY!r} state)")
        if checkpoint.model_config != self.model.config or checkpoint.tasks != self.model.tasks:
            raise PretrainError(f"{path}: written for another model or tasks ({checkpoint.model_config}, "
                                f"{checkpoint.tasks}); expected {self.model.config}, {self.model.tasks}")
        differing = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in self._identity().items()
                     if saved.get(k) != v]
        if differing:
            raise PretrainError(f"{path}: cannot resume with other data settings ({'; '.join(differing)})")
        resume_file = self.out / str(saved["resume_file"])
        if not resume_file.is_file() or hashlib.sha256(resume_file.read_bytes()).hexdigest() != saved["resume_sha256"]:
            raise CheckpointError(f"{resume_file}: missing or does not match the checkpoint's sha256")
        extra = torch.load(resume_file, map_location=self.device, weights_only=True)
        self.model.load_state_dict(checkpoint.weights, strict=True)
        self.head.load_state_dict(extra["mlm_head"])
        self.optimizer.load_state_dict(extra["optimizer"])
        self.step, self.history = int(saved["step"]), list(saved["history"])


def _tensor_file(obj: dict) -> bytes:
    handle = io.BytesIO()
    torch.save(obj, handle)
    return handle.getvalue()


def pretrain(*, model_config: ModelConfig, tasks: tuple[str, ...], fasta: list[str | Path], out_dir: str | Path,
             settings: PretrainSettings = PretrainSettings(), resume: bool = False, progress: bool = True,
             device: str = "cpu") -> PretrainResult:
    """Pre-train the backbone by masked-base prediction and write the checkpoint the federation
    starts from.

    Args:
        model_config: the federation's model section.
        tasks: the federation's tasks (their heads are saved as initialised).
        fasta: FASTA files of public reference sequence.
        out_dir: where the checkpoint and the resume file go.
        settings: steps, batch, length, optimizer, masking, evaluation and checkpoint cadence, seed.
        resume: continue from ``out_dir``'s checkpoint (same data settings); ``settings.steps`` is
            the total, so a finished run given more steps continues the schedule's new end.
        progress: show a rich progress bar (step, loss, held-out masked accuracy, ETA) on stderr.
        device: a torch device.

    Returns:
        The checkpoint path, the final step and the evaluation history.

    Raises:
        PretrainError: a bad setting, no usable window, a model with epigenetic tracks, an existing
            checkpoint without ``resume`` or a checkpoint that does not fit with it.
        ReaderError, MissingFileError: a missing or malformed FASTA (names the file).
        CheckpointError: a damaged checkpoint or resume file.
    """
    out = Path(out_dir)
    if not resume and (out / CHECKPOINT_DIR).exists():
        raise PretrainError(f"{out / CHECKPOINT_DIR}: a pre-training checkpoint already exists; pass resume to "
                            "continue it or choose another output directory")
    if resume and not (out / CHECKPOINT_DIR).exists():
        raise PretrainError(f"{out / CHECKPOINT_DIR}: no checkpoint to resume from")
    run = _Run(model_config=model_config, tasks=tuple(tasks), fasta=[Path(f) for f in fasta], out_dir=out,
               settings=settings, device=device)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        run.restore()
    _train(run, progress)
    return PretrainResult(out / CHECKPOINT_DIR, run.step, run.history)


def _train(run: _Run, progress: bool) -> None:
    s = run.settings
    if run.step == 0 and not run.history:
        loss, accuracy = run.evaluate()
        run.history.append({"step": 0, "train_loss": None, "heldout_loss": round(loss, 5),
                            "heldout_accuracy": round(accuracy, 5), "seconds": 0.0})
    started, losses = time.monotonic(), []
    elapsed = run.history[-1]["seconds"] if run.history else 0.0
    with progress_bar(Console(stderr=True), status=True, disable=not progress) as bar:
        job = bar.add_task("pre-training", total=s.steps, completed=run.step, status=_status(run.history))
        while run.step < s.steps:
            losses.append(run.train_step())
            if run.step % s.eval_every == 0 or run.step == s.steps:
                loss, accuracy = run.evaluate()
                run.history.append({"step": run.step, "train_loss": round(float(np.mean(losses)), 5),
                                    "heldout_loss": round(loss, 5), "heldout_accuracy": round(accuracy, 5),
                                    "seconds": round(elapsed + time.monotonic() - started, 2)})
                losses = []
            if run.step % s.checkpoint_every == 0 or run.step == s.steps:
                run.save()
            bar.update(job, completed=run.step, status=_status(run.history, losses))


def _status(history: list[dict], losses: list[float] | None = None) -> str:
    last = history[-1] if history else {}
    loss = f"loss {np.mean(losses):.3f}" if losses else f"loss {last.get('train_loss') or float('nan'):.3f}"
    return f"{loss}  held-out masked acc {last.get('heldout_accuracy', float('nan')):.3f}"

