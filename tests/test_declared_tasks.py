"""Tasks and species a federation declares, not hard-coded (issue 13 §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from common.checkpoint import CheckpointError, load_model, save_checkpoint
from common.config import ConfigError, FederationConfig, load_institution, parse_config
from common.metrics import metric_keys, task_metrics
from common.model import GenomicTransformer, ModelConfig
from common.synthetic.cli import synth_from_config
from common.tasks import PRESETS, TASKS, declare_task, get_task, task_loss


@pytest.fixture
def forget_declared():
    """Each test declares its own names; the registry is left as it was found."""
    before = dict(TASKS)
    yield
    TASKS.clear()
    TASKS.update(before)


def test_a_declared_task_gets_its_head_loss_and_metrics(forget_declared):
    spec = declare_task("tf_affinity", kind="sequence", classes=["unbound", "weak", "strong"], metric="auroc")
    model = GenomicTransformer(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=64, kmer_linear=2),
                               tasks=("promoter", "tf_affinity"))
    tokens = torch.randint(1, 5, (4, 30))

    logits = model(tokens, "tf_affinity").logits

    assert logits.shape == (4, 3)
    assert task_loss("tf_affinity", logits, torch.tensor([0, 1, 2, 1])).isfinite()
    prob = np.random.default_rng(0).dirichlet(np.ones(3), size=30)
    metrics = task_metrics(spec, np.arange(30) % 3, prob)
    assert spec.headline_metric == "auroc" and set(metrics) == set(metric_keys(spec))


def test_a_declared_position_task_reports_pr_auc_per_class(forget_declared):
    spec = declare_task("tss_map", kind="position", classes=["background", "tss", "polya"])
    y = np.array([0] * 40 + [1] * 5 + [2] * 5)
    prob = np.full((50, 3), 0.1)
    prob[np.arange(50), y] = 0.8  # a perfect ranking

    metrics = task_metrics(spec, y, prob)

    assert spec.headline_metric == "pr_auc_mean"
    assert metrics["pr_auc_tss"] == metrics["pr_auc_polya"] == metrics["pr_auc_mean"] == 1.0
    assert set(metrics) == set(metric_keys(spec))
    assert set(metric_keys(get_task("splice"))) >= {"pr_auc_donor", "pr_auc_acceptor", "topk_donor"}


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "promoter", "kind": "sequence", "classes": ["a", "b", "c"]}, "built-in task"),
    ({"name": "Bad-Name", "kind": "sequence", "classes": ["a", "b"]}, "lower-case"),
    ({"name": "x1", "kind": "graph", "classes": ["a", "b"]}, "kind 'graph'"),
    ({"name": "x2", "kind": "sequence", "classes": ["a"]}, "2..64 distinct"),
    ({"name": "x3", "kind": "sequence", "classes": ["a", "a"]}, "2..64 distinct"),
    ({"name": "x4", "kind": "sequence", "classes": ["a b", "c"]}, "class names"),
    ({"name": "x5", "kind": "position", "classes": ["a", "b"], "metric": "mcc"}, "reports one of pr_auc_mean"),
    ({"name": "x6", "kind": "sequence", "classes": ["a", "b"], "class_weights": [1.0]}, "one positive weight"),
])
def test_bad_declarations_are_refused(forget_declared, kwargs, message):
    with pytest.raises(ValueError, match=message):
        declare_task(kwargs.pop("name"), **kwargs)


def test_declaring_again_is_a_no_op_and_a_different_definition_an_error(forget_declared):
    first = declare_task("enhancer_chip", kind="sequence", classes=["no", "yes"])
    assert declare_task("enhancer_chip", kind="sequence", classes=["no", "yes"]) is not first  # equal, re-made
    assert get_task("enhancer_chip") == first
    with pytest.raises(ValueError, match="declared differently"):
        declare_task("enhancer_chip", kind="sequence", classes=["no", "yes", "maybe"])
    assert PRESETS["promoter"] is TASKS["promoter"]
    assert declare_task("chip_peak", kind="sequence", classes=["no", "yes"], metric="pr_auc").headline_metric == "auprc"


def test_federation_tasks_as_a_mapping_declare_them(forget_declared):
    config = parse_config({"tasks": {"promoter": None, "atac": {"kind": "sequence", "classes": ["closed", "open"]}},
                           "aggregation": {"species_weights": {"oryza_sativa": 2.0}}}, FederationConfig)

    assert config.tasks == ("promoter", "atac") and get_task("atac").label_names == ("closed", "open")
    with pytest.raises(ConfigError, match=r"tasks \['chip'\] are neither built-in .* nor declared"):
        parse_config({"tasks": ["promoter", "chip"]}, FederationConfig)
    with pytest.raises(ConfigError, match="tasks.atac.kind"):
        parse_config({"tasks": {"atac": {"kind": "tree", "classes": ["a", "b"]}}}, FederationConfig)


def test_an_institution_file_declares_its_task_and_names_a_free_species(forget_declared, tmp_path):
    (tmp_path / "t.tsv").write_text("sequence\tlabel\nACGT\t0\n")
    config = {"name": "rice-lab", "species": "oryza_sativa", "state_dir": "state",
              "tasks": {"methylation": {"kind": "sequence", "classes": ["low", "mid", "high"]}},
              "data": {"methylation": {"table": "t.tsv"}}}
    path = tmp_path / "inst.yaml"
    path.write_text(yaml.safe_dump(config))

    institution = load_institution(path)

    assert institution.species == "oryza_sativa" and get_task("methylation").num_classes == 3
    config["tasks"] = ["histone"]
    config["data"] = {"histone": {"table": "t.tsv"}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"inst\.yaml: tasks \['histone'\] are neither built-in"):
        load_institution(path)
    config["species"] = "Oryza Sativa"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="species"):
        load_institution(path)


def test_a_checkpoint_brings_its_declared_tasks_to_a_process_that_never_saw_them(forget_declared, tmp_path):
    declare_task("pausing", kind="sequence", classes=["free", "paused", "stalled"], metric="accuracy")
    model = GenomicTransformer(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=64),
                               tasks=("pausing",))
    save_checkpoint(tmp_path / "ckpt", weights=model.state_dict(), model_config=model.config, tasks=model.tasks,
                    round=1)
    del TASKS["pausing"]  # as in a fresh process

    loaded, checkpoint = load_model(tmp_path / "ckpt")

    assert checkpoint.tasks == ("pausing",) and get_task("pausing").headline_metric == "accuracy"
    assert loaded(torch.randint(1, 5, (2, 20)), "pausing").logits.shape == (2, 3)
    TASKS["pausing"] = TASKS["pausing"].__class__("pausing", "sequence", ("a", "b"), "mcc", "other")
    with pytest.raises(CheckpointError, match="clash"):
        load_model(tmp_path / "ckpt")


def test_generating_data_for_a_species_without_a_genome_model_is_a_clear_error(tmp_path):
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["promoter"], "data": {"n_per_task": 100},
                                    "institutions": [{"name": "cress", "species": "arabidopsis_thaliana",
                                                      "tasks": ["promoter"]}]}))
    with pytest.raises(Exception, match="arabidopsis_thaliana"):
        synth_from_config(path, tmp_path / "out")


def test_the_example_institution_file_is_valid(forget_declared):
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / "institutions" / "example-own-files.yaml"

    institution = load_institution(path)

    assert institution.species == "arabidopsis_thaliana" and set(institution.data) == {"tf_binding", "promoter"}
    assert institution.data["tf_binding"].reference == path.parent / "data" / "TAIR10.fa"
    assert institution.split.by == "chromosome"
