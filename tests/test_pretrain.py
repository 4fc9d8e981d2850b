"""Public pre-training: masking, the objective, learning a planted motif, checkpoint and exact
resume, errors for bad FASTA, the ``pretrain`` command, and the generator's public sequence."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.checkpoint import load_model
from common.data.readers_common import MissingFileError, ReaderError
from common.model import GenomicTransformer, ModelConfig
from common.tokenizer import A_ID, MASK_ID, N_ID, PAD_ID, T_ID, encode
from server import pretraining
from server.ops.pretrain import add_pretrain_parser
from server.pretraining import (
    IGNORE,
    PretrainError,
    PretrainSettings,
    mask_tokens,
    masked_base_loss,
    pretrain,
    reverse_complement_tokens,
)

REPO = Path(__file__).resolve().parents[1]
MOTIF = "GATTACACGTGC"
TINY = ModelConfig(d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0, max_len=64, motif_kernel=9)
TASKS = ("promoter", "splice")


def write_fasta(path: Path, records: dict[str, str], width: int = 60) -> Path:
    lines = []
    for name, seq in records.items():
        lines.append(f">{name}\n")
        lines += [seq[i : i + width] + "\n" for i in range(0, len(seq), width)]
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def motif_fasta(tmp_path_factory) -> Path:
    """Random bases with a 12-base motif every 32 bases: 37.5 % of bases are predictable, so the
    best masked accuracy is about 0.375 + 0.625 / 4 = 0.53 (chance 0.25)."""
    rng = np.random.default_rng(0)
    seq = "".join("".join(rng.choice(list("ACGT"), 20)) + MOTIF for _ in range(400))
    half = len(seq) // 2
    return write_fasta(tmp_path_factory.mktemp("fasta") / "motif.fa",
                       {"chr1": seq[:half].lower(), "chr2": seq[half:]})  # soft-masked chr1 still counts


def settings(**changes) -> PretrainSettings:
    values = {"steps": 40, "batch_size": 16, "learning_rate": 3e-3, "eval_every": 20, "checkpoint_every": 20,
              "seed": 3}
    return PretrainSettings(**{**values, **changes})


# --- masking and the objective -------------------------------------------------------------------
def test_masking_chooses_15_percent_of_real_bases_and_never_padding_or_n():
    rng = np.random.default_rng(0)
    tokens = rng.integers(A_ID, T_ID + 1, (400, 100))
    tokens[:, 80:] = PAD_ID
    tokens[:, :10] = N_ID

    inputs, targets = mask_tokens(tokens, np.random.default_rng(1), fraction=0.15)

    chosen = targets != IGNORE
    assert not chosen[:, 80:].any() and not chosen[:, :10].any()
    assert (chosen.sum(axis=1) == round(0.15 * 70)).all()
    assert (targets[chosen] == tokens[chosen] - A_ID).all()
    assert (inputs[~chosen] == tokens[~chosen]).all()
    masked = (inputs[chosen] == MASK_ID).mean()
    kept = (inputs[chosen] == tokens[chosen]).mean()  # the 10 % kept plus random draws of the same base
    assert masked == pytest.approx(0.8, abs=0.03)
    assert kept == pytest.approx(0.1 + 0.1 / 4, abs=0.02)
    assert ((inputs[chosen] >= A_ID) & (inputs[chosen] <= T_ID) | (inputs[chosen] == MASK_ID)).all()


def test_a_row_without_real_bases_gets_nothing_chosen():
    tokens = np.array([[N_ID, N_ID, PAD_ID], [A_ID, N_ID, PAD_ID]])

    _, targets = mask_tokens(tokens, np.random.default_rng(0))

    assert (targets[0] == IGNORE).all()
    assert targets[1].tolist() == [0, IGNORE, IGNORE]  # at least one base of a row with any


def test_loss_counts_only_the_chosen_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4)
    targets = torch.full((2, 5), IGNORE)
    targets[0, 1], targets[1, 3] = 2, 0
    changed = logits.clone()
    changed[targets == IGNORE] = 100.0

    loss = masked_base_loss(logits, targets)

    expected = torch.nn.functional.cross_entropy(torch.stack([logits[0, 1], logits[1, 3]]), torch.tensor([2, 0]))
    assert loss.item() == pytest.approx(expected.item())
    assert masked_base_loss(changed, targets).item() == pytest.approx(loss.item())


def test_reverse_complement_pairs_bases_and_keeps_n_and_padding():
    tokens = encode("ACGTN")

    assert reverse_complement_tokens(tokens).tolist() == encode("NACGT").tolist()
    assert reverse_complement_tokens(np.array([PAD_ID, A_ID])).tolist() == [T_ID, PAD_ID]


def test_encode_is_what_forward_feeds_the_head():
    model = GenomicTransformer(TINY, tasks=TASKS).eval()
    tokens = torch.from_numpy(encode("ACGTACGTNNACGT")).unsqueeze(0)

    representation = model.encode(tokens)

    assert representation.shape == (1, 14, TINY.d_model)
    expected = model.heads["splice"](representation, tokens != PAD_ID)
    torch.testing.assert_close(model(tokens, "splice").logits, expected)


# --- training -----------------------------------------------------------------------------------
def test_a_repeated_motif_is_learned_well_above_chance(motif_fasta, tmp_path):
    result = pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path,
                      settings=settings(steps=150, batch_size=32, eval_every=150, checkpoint_every=150),
                      progress=False)

    first, last = result.history[0], result.history[-1]
    assert first["step"] == 0 and last["step"] == 150
    assert first["heldout_accuracy"] < 0.35
    assert last["heldout_accuracy"] > 0.42


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(motif_fasta, tmp_path, monkeypatch):
    whole = pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path / "whole",
                     settings=settings(), progress=False)
    original_step = pretraining._Run.train_step

    def interrupted(run):
        if run.step == 27:
            raise KeyboardInterrupt
        return original_step(run)

    monkeypatch.setattr(pretraining._Run, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path / "split",
                 settings=settings(), progress=False)
    monkeypatch.setattr(pretraining._Run, "train_step", original_step)
    resumed = pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path / "split",
                       settings=settings(), resume=True, progress=False)

    assert resumed.step == whole.step == 40
    assert [h["step"] for h in resumed.history] == [0, 20, 40]
    assert [h["heldout_accuracy"] for h in resumed.history] == [h["heldout_accuracy"] for h in whole.history]
    a, _ = load_model(whole.checkpoint)
    b, checkpoint = load_model(resumed.checkpoint)
    assert checkpoint.state["pretraining"]["step"] == 40
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert len(list((tmp_path / "split").glob("pretrain-resume-*.pt"))) == 1


def test_resume_refuses_other_data_settings_and_a_second_fresh_run(motif_fasta, tmp_path):
    pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path,
             settings=settings(steps=2, eval_every=2, checkpoint_every=2), progress=False)

    with pytest.raises(PretrainError, match="already exists"):
        pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path, settings=settings(),
                 progress=False)
    with pytest.raises(PretrainError, match="seed: checkpoint 3, now 4"):
        pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path,
                 settings=settings(seed=4), resume=True, progress=False)
    with pytest.raises(PretrainError, match="no checkpoint to resume"):
        pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path / "none",
                 settings=settings(), resume=True, progress=False)


def test_checkpoint_loads_with_a_trained_backbone_and_heads_as_initialised(motif_fasta, tmp_path):
    result = pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path,
                      settings=settings(steps=5, eval_every=5, checkpoint_every=5), progress=False)

    model, checkpoint = load_model(result.checkpoint)

    torch.manual_seed(settings().seed)
    fresh = GenomicTransformer(TINY, tasks=TASKS).state_dict()
    trained = model.state_dict()
    assert checkpoint.model_config == TINY and checkpoint.tasks == TASKS
    assert not torch.equal(trained["embedding.tokens.weight"], fresh["embedding.tokens.weight"])
    assert not torch.equal(trained["blocks.0.attention.q.weight"], fresh["blocks.0.attention.q.weight"])
    for name in (n for n in fresh if n.startswith("heads.")):
        assert torch.equal(trained[name], fresh[name]), name
    assert checkpoint.state["pretraining"]["differential_privacy"] is False


# --- errors ---------------------------------------------------------------------------------------
def test_a_missing_fasta_is_named(tmp_path):
    with pytest.raises(MissingFileError, match="nope.fa: FASTA file not found"):
        pretrain(model_config=TINY, tasks=TASKS, fasta=[tmp_path / "nope.fa"], out_dir=tmp_path / "out")


def test_a_fasta_without_a_usable_window_is_an_error(tmp_path):
    fasta = write_fasta(tmp_path / "n.fa", {"chrN": "N" * 500, "short": "ACGT" * 10})

    with pytest.raises(PretrainError, match=r"n\.fa: 0 usable window\(s\) of 64 bases"):
        pretrain(model_config=TINY, tasks=TASKS, fasta=[fasta], out_dir=tmp_path / "out")


def test_a_bad_character_names_file_line_and_record(tmp_path):
    fasta = write_fasta(tmp_path / "bad.fa", {"chr1": "ACGT" * 40 + "X" + "ACGT" * 40}, width=50)

    with pytest.raises(ReaderError, match=r"bad\.fa, line 5 \(record 'chr1'\).*'X'"):
        pretrain(model_config=TINY, tasks=TASKS, fasta=[fasta], out_dir=tmp_path / "out")


@pytest.mark.parametrize(("field", "value", "match"), [("steps", 0, "pretraining.steps"),
                                                       ("mask_fraction", 1.0, "pretraining.mask_fraction"),
                                                       ("length", 4, "pretraining.length")])
def test_bad_settings_name_the_field(field, value, match):
    with pytest.raises(PretrainError, match=match):
        PretrainSettings(**{field: value})


def test_a_window_longer_than_the_model_is_refused(motif_fasta, tmp_path):
    with pytest.raises(PretrainError, match="exceeds model.max_len 64"):
        pretrain(model_config=TINY, tasks=TASKS, fasta=[motif_fasta], out_dir=tmp_path, settings=settings(length=65))


def _command(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_pretrain_parser(parser.add_subparsers())
    return parser.parse_args(["pretrain", *argv])


def test_the_command_reports_a_missing_fasta_on_one_line(tmp_path, capsys):
    args = _command(["--fasta", str(tmp_path / "missing.fa"), "--config", str(REPO / "configs/tiny.yaml"),
                     "--out", str(tmp_path / "out")])

    assert args.func(args) == 1

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.fa" in err and "pretrain failed" in err


def test_the_command_pretrains_the_federations_model(motif_fasta, tmp_path):
    args = _command(["--fasta", str(motif_fasta), "--config", str(REPO / "configs/tiny.yaml"), "--out",
                     str(tmp_path), "--steps", "2", "--batch-size", "4", "--length", "64", "--eval-every", "2"])

    assert args.func(args) == 0

    model, checkpoint = load_model(tmp_path / "checkpoint")
    tiny = yaml.safe_load((REPO / "configs/tiny.yaml").read_text())
    assert checkpoint.model_config.d_model == tiny["model"]["d_model"]
    assert checkpoint.tasks == tuple(tiny["tasks"])


# --- the generator's public sequence ----------------------------------------------------------------
def _kmers(sequence: str, k: int) -> set[str]:
    return {sequence[i : i + k] for i in range(len(sequence) - k + 1)}


def test_generator_writes_public_sequence_per_species_disjoint_from_the_records(tmp_path):
    from common.synthetic.federation import manifest_differences, write_federation_data

    institutions = [{"name": "a", "species": "human", "tasks": ["promoter", "splice"]},
                    {"name": "b", "species": "yeast", "tasks": ["coding"]}]
    arguments = {"institutions": institutions, "seed": 2, "n_per_task": 20, "central_n": 10}
    manifest = write_federation_data(out_dir=tmp_path, public_bases=30_000, progress=False, **arguments)

    records = [line.split("\t")[2] for split in ("train", "val", "test") for path in tmp_path.glob(f"*/*/{split}.tsv")
               for line in path.read_text().splitlines()[1:]]
    assert len(records) > 60
    record_kmers = set().union(*(_kmers(r, 50) for r in records))
    rng = np.random.default_rng(0)
    for species in ("human", "yeast"):
        entry = manifest["public"][species]
        assert entry["path"] == f"public/{species}.fa" and entry["bases"] == 30_000
        text = (tmp_path / entry["path"]).read_text().splitlines()
        sequence = "".join(line for line in text if not line.startswith(">"))
        assert len(sequence) == 30_000 and set(sequence) <= set("ACGT")
        starts = rng.integers(0, len(sequence) - 50, 2000)
        assert not any(sequence[s : s + 50] in record_kmers for s in starts)
    assert manifest_differences(manifest, public_bases=30_000, **arguments) == []
    assert manifest_differences(manifest, **arguments) == []
    assert manifest_differences(manifest, public_bases=0, **arguments) == [
        "public_bases: on disk 30000, asked for 0"]
