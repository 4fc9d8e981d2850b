from pathlib import Path

import pytest
import yaml

from common.config import (
    ConfigError,
    FederationConfig,
    InstitutionConfig,
    PrivacyConfig,
    TrainingConfig,
    federation_from_run_config,
    load_config,
    load_federation,
    parse_config,
)
from common.model import ModelConfig
from common.tasks import TASK_NAMES

GOOD_INSTITUTION = {"name": "oslo-uh", "species": "human", "tasks": ["promoter", "splice"],
                    "privacy": {"epsilon": 4.0, "delta": 1e-5, "planned_rounds": 5}}


def write(tmp_path, text, name="institution.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_institution_config_loads(tmp_path):
    path = write(tmp_path, "name: oslo-uh\nspecies: human\ntasks: [promoter, splice]\n"
                           "privacy: {epsilon: 4, planned_rounds: 5}\n")
    config = load_config(path, InstitutionConfig)
    assert config.tasks == ("promoter", "splice")
    assert config.privacy.epsilon == 4.0 and config.privacy.accountant == "rdp"


@pytest.mark.parametrize("change, key_path, message", [
    ({"nmae": "x"}, "nmae", "unknown key"),
    ({"species": "Zebra Fish"}, "species", "should match pattern"),
    ({"tasks": ["promoter", "Histone"]}, "tasks.1", "should match pattern"),
    ({"tasks": []}, "tasks", "at least 1"),
    ({"tasks": ["splice", "splice"]}, "tasks", "duplicate task"),
    ({"name": "Oslo UH!"}, "name", "should match pattern"),
    ({"device": "tpu"}, "device", "should match pattern"),
    ({"privacy": {"epsilon": -1, "planned_rounds": 5}}, "privacy.epsilon", "greater than 0"),
    ({"privacy": {"delta": 1.5, "planned_rounds": 5}}, "privacy.delta", "less than 1"),
    ({"privacy": {"epsilon": 3}}, "privacy", "exactly one of noise_multiplier or planned_rounds"),
    ({"privacy": {"noise_multiplier": 1.0, "planned_rounds": 3}}, "privacy", "exactly one of"),
    ({"privacy": {"accountant": "gdp", "planned_rounds": 3}}, "privacy.accountant", "Input should be"),
    ({"privacy": {"planned_rounds": 3, "max_grad_norm": 0}}, "privacy.max_grad_norm", "greater than 0"),
    ({"training": {"learning_rate": "fast"}}, "training.learning_rate", "valid number"),
    ({"training": {"batch_size": 0}}, "training.batch_size", "greater than or equal to 1"),
    ({"training": {"epochs": 2}}, "training.epochs", "unknown key"),
])
def test_bad_institution_config_names_file_and_key_path(tmp_path, change, key_path, message):
    import yaml

    path = write(tmp_path, yaml.safe_dump({**GOOD_INSTITUTION, **change}))
    with pytest.raises(ConfigError, match=rf"institution\.yaml: {key_path}: .*{message}"):
        load_config(path, InstitutionConfig)


@pytest.mark.parametrize("values, key_path, message", [
    ({"d_model": 30, "n_heads": 4}, "model", "not divisible"),
    ({"d_modle": 32}, "model.d_modle", "unknown key"),
    ({"dropout": "high"}, "model.dropout", "valid number"),
    ({"n_layers": 0}, "model", "model.n_layers: expected a positive integer"),
])
def test_bad_model_section(values, key_path, message):
    with pytest.raises(ConfigError, match=rf"demo\.yaml: {key_path}: .*{message}"):
        parse_config({"model": values}, FederationConfig, source="demo.yaml")


@pytest.mark.parametrize("option, value", [("kmer_linear", {"promoter": 5, "enhancer": 5}),
                                           ("codon_frames", ["coding", "enhancer"]),
                                           ("kmer_both_strands", ["enhancer"]),
                                           ("kmer_norm", {"promoter": 2, "enhancer": 8})])
def test_per_task_model_options_name_federation_tasks(option, value):
    """A per-task option naming a task the federation does not train is a mistake in the file (the
    model itself ignores tasks it has no head for: one institution trains a subset)."""
    with pytest.raises(ConfigError, match=rf"model.{option}: \['enhancer'\] are not federation tasks"):
        parse_config({"tasks": ["promoter", "coding"], "model": {"kmer_linear": 4, option: value}}, FederationConfig,
                     source="demo.yaml")
    config = parse_config({"tasks": ["promoter", "coding", "enhancer"], "model": {"kmer_linear": 4, option: value}},
                          FederationConfig)
    assert getattr(config.model, option) == (tuple(value) if isinstance(value, list) else value)


@pytest.mark.parametrize("weights, message", [
    ({"promoter": [0.25, 1.5]}, r"training.weights_after_clipping: .*each in \(0, 1\]"),
    ({"promoter": [0.0, 1.0]}, r"training.weights_after_clipping: .*each in \(0, 1\]"),
    ({"promoter": [1.0]}, r"training.weights_after_clipping: .*one weight per class"),
    ({"promoter": [0.5, 0.5, 1.0]}, r"'promoter' has 2 classes .*got 3 weights"),
    ({"splice": [1.0, 1.0, 1.0]}, r"'splice' labels every base"),
    ({"enhancer": [0.5, 1.0]}, r"'enhancer' is not one of the tasks"),
])
def test_weights_after_clipping_are_at_most_one_per_class_of_a_sequence_task(weights, message):
    """Above 1 a record's clipped gradient could exceed C, which the noise is calibrated to."""
    with pytest.raises(ConfigError, match=rf"demo\.yaml: .*{message}"):
        parse_config({"tasks": ["promoter", "splice"], "training": {"weights_after_clipping": weights}},
                     FederationConfig, source="demo.yaml")
    config = parse_config({"tasks": ["promoter", "splice"],
                           "training": {"weights_after_clipping": {"promoter": [0.25, 1]}}}, FederationConfig)
    assert config.training.weights_after_clipping == {"promoter": (0.25, 1.0)}


def test_model_section_builds_a_model_config():
    assert parse_config({"model": {"d_model": 64, "n_heads": 4}}, FederationConfig).model == ModelConfig(d_model=64, n_heads=4)


def test_missing_file_empty_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nothere.yaml: cannot read config file"):
        load_config(tmp_path / "nothere.yaml", InstitutionConfig)
    with pytest.raises(ConfigError, match="empty.yaml: empty config file"):
        load_config(write(tmp_path, "", "empty.yaml"), InstitutionConfig)
    with pytest.raises(ConfigError, match=r"bad.yaml: line 2: not valid YAML"):
        load_config(write(tmp_path, "name: a\n  species: [human\n", "bad.yaml"), InstitutionConfig)
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"), InstitutionConfig)


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="x.yaml: species: Field required"):
        parse_config({"name": "a", "tasks": ["coding"]}, InstitutionConfig, source="x.yaml")


def test_configs_are_immutable():
    config = TrainingConfig()
    with pytest.raises(Exception, match="frozen"):
        config.learning_rate = 1.0  # type: ignore[misc]


def test_disabled_privacy_needs_no_noise_setting():
    assert PrivacyConfig(enabled=False).noise_multiplier is None


def test_every_built_in_task_is_a_valid_task_name():
    import re

    from common.tasks import TASK_NAME_PATTERN

    assert all(re.match(TASK_NAME_PATTERN, name) for name in TASK_NAMES)


def test_every_path_in_a_file_resolves_against_that_file_never_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", yaml.safe_dump({
        "output_dir": "../runs/x", "data_dir": "data", "init_checkpoint": "ckpt",
        "central_evaluation": {"data_dir": "central"},
        "enrolled": [{"name": "oslo-uh", "public_key": "keys/oslo-uh.pub"}]}), name="federation.yaml")
    for cwd in (tmp_path, tmp_path / "conf", Path("/")):
        monkeypatch.chdir(cwd)
        config = load_federation(path.relative_to(cwd) if cwd != Path("/") else path)
        assert config.output_dir == tmp_path / "runs" / "x"
        assert config.data_dir == tmp_path / "conf" / "data"
        assert config.init_checkpoint == tmp_path / "conf" / "ckpt"
        assert config.central_evaluation.data_dir == tmp_path / "conf" / "central"
        assert config.enrolled[0].public_key == tmp_path / "conf" / "keys" / "oslo-uh.pub"
    monkeypatch.chdir(tmp_path)  # a path given on the command line means the working directory
    assert load_federation(path, output_dir=Path("elsewhere")).output_dir == tmp_path / "elsewhere"


def test_inline_institutions_resolve_the_same_for_server_and_clients(tmp_path):
    # The server checks <data_dir>; a simulated client must read exactly there (it once read
    # <output_dir>/data regardless), and keep its ledger under <output_dir>/state.
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", yaml.safe_dump({
        "output_dir": "out", "data_dir": "shared-data",
        "institutions": [GOOD_INSTITUTION, {**GOOD_INSTITUTION, "name": "own-dirs", "data_dir": "mine",
                                            "state_dir": "/abs/state"}]}), name="federation.yaml")

    config = load_federation(path)
    from_run_config = federation_from_run_config({"config-file": str(path), "base-dir": str(tmp_path)})

    assert config.institution(0).data_dir == tmp_path / "conf" / "shared-data" / "oslo-uh"
    assert config.institution(0).state_dir == tmp_path / "conf" / "out" / "state" / "oslo-uh"
    assert config.institution(1).data_dir == tmp_path / "conf" / "mine"  # relative to its file
    assert config.institution(1).state_dir == Path("/abs/state")
    assert from_run_config == config
    with pytest.raises(ConfigError, match="institutions: no entry 2"):
        config.institution(2)
