"""Models as Hugging Face users expect them (issue 15): a checkpoint directory of safetensors,
config.json and a model card; GenomicTransformer.save_pretrained / from_pretrained; nothing unpickled."""

import json

import pytest
import torch
from safetensors.torch import load_file

from common.analysis.scoring import predict_sequences
from common.checkpoint import CheckpointError, load_checkpoint
from common.model import GenomicTransformer, ModelConfig
from common.tasks import declare_task

MODEL = ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=64, kmer_linear=2)
SEQUENCES = ["ACGTACGTTTGACCA", "GGGCCCATATAT"]


def test_save_pretrained_and_from_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GenomicTransformer(MODEL, tasks=("promoter", "splice")).eval()

    path = model.save_pretrained(tmp_path / "model", round=3, state={"note": "unit"})
    loaded = GenomicTransformer.from_pretrained(path)

    assert {f.name for f in path.iterdir()} == {"model.safetensors", "config.json", "checkpoint.json", "README.md"}
    assert not loaded.training and loaded.tasks == model.tasks and loaded.config == model.config
    for task in model.tasks:
        for ours, theirs in zip(predict_sequences(model, sequences=SEQUENCES, task=task),
                                predict_sequences(loaded, sequences=SEQUENCES, task=task), strict=True):
            assert ours.tolist() == theirs.tolist()
    plain = load_file(str(path / "model.safetensors"))  # readable by safetensors alone, no helixfed needed
    assert plain.keys() == model.state_dict().keys()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "helixfed-genomic-transformer" and config["tasks"] == ["promoter", "splice"]
    assert config["model"]["kmer_linear"] == 2
    card = (path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: helixfed") and "## Intended use and limits" in card
    assert load_checkpoint(path).state == {"note": "unit"}
    assert all((path / f).stat().st_mode & 0o777 == 0o600 for f in ("model.safetensors", "config.json"))


def test_a_declared_task_travels_in_config_json(tmp_path):
    declare_task("cpg_island", kind="sequence", classes=("no", "yes", "partial"), metric="mcc")
    model = GenomicTransformer(MODEL, tasks=("cpg_island",))
    path = model.save_pretrained(tmp_path / "model")
    declaration = json.loads((path / "config.json").read_text())["task_declarations"]["cpg_island"]
    assert declaration["classes"] == ["no", "yes", "partial"]
    assert GenomicTransformer.from_pretrained(path).heads["cpg_island"] is not None


def test_local_and_pretraining_cards_say_what_the_state_records(tmp_path):
    model = GenomicTransformer(MODEL, tasks=("promoter",))
    local = model.save_pretrained(tmp_path / "dp", state={"local_training": {
        "institution": "lab-a", "dp": True, "epsilon": 1.25, "delta": 1e-5, "accountant": "rdp"}})
    assert "with DP-SGD: ε = 1.25 at δ = 1e-05 (rdp)" in (local / "README.md").read_text()
    non_dp = model.save_pretrained(tmp_path / "non-dp", state={"local_training": {"institution": "lab-a", "dp": False}})
    assert "WITHOUT differential privacy" in (non_dp / "README.md").read_text()
    public = model.save_pretrained(tmp_path / "public", state={"pretraining": {"steps": 10}})
    assert "public sequence only" in (public / "README.md").read_text()


def test_an_older_or_foreign_directory_is_a_clear_error(tmp_path):
    (tmp_path / "v1").mkdir()
    torch.save(GenomicTransformer(MODEL, tasks=("promoter",)).state_dict(), tmp_path / "v1" / "weights.pt")
    (tmp_path / "v1" / "checkpoint.json").write_text("{}")
    with pytest.raises(CheckpointError, match="older helixfed"):
        GenomicTransformer.from_pretrained(tmp_path / "v1")
    (tmp_path / "hf").mkdir()
    for name in ("model.safetensors", "config.json"):
        (tmp_path / "hf" / name).write_text("{}")
    with pytest.raises(CheckpointError, match="not a helixfed checkpoint"):
        GenomicTransformer.from_pretrained(tmp_path / "hf")
