"""The standing probe suite (issue 14): bad and hostile inputs to config files, data sources and
ledgers, each answered by the exact kind of error, naming where, with nothing on disk changed.
(Checkpoints, replies and the service: tests/test_privacy_holes.py, tests/test_service.py.)"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from client.privacy.ledger import LEDGER_FILENAME, LedgerError, PrivacyLedger
from common.config import ConfigError, FederationConfig, load_config, load_institution
from common.data.dataset import DataError
from common.data.importing import institution_splits
from common.data.readers_common import MissingFileError

INSTITUTION = {"name": "lab-a", "species": "human", "tasks": ["enhancer"], "state_dir": "state",
               "data": {"enhancer": {"positives": ["pos.fa"], "negatives": ["neg.fa"]}},
               "privacy": {"epsilon": 8.0, "delta": 1e-5, "planned_rounds": 4}}
FEDERATION = {"name": "fed", "tasks": ["promoter", "enhancer"], "model": {"d_model": 32, "n_heads": 4},
              "training": {"batch_size": 32}, "federation": {"rounds": 2}, "output_dir": "run"}


def tree_hash(root: Path) -> dict:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def mutated(base: dict, path: str, value) -> dict:
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


DELETE = object()

INSTITUTION_PROBES = [
    ("name", DELETE, "name: Field required"), ("name", "", "name"), ("name", "Lab A", "name"),
    ("name", "a" * 80, "name"), ("name", ["x"], "name"), ("species", "Homo sapiens", "species"),
    ("species", 7, "species"), ("species", DELETE, "species"), ("tasks", [], "tasks"),
    ("tasks", "enhancer", "tasks"), ("tasks", ["enhancer", "enhancer"], "duplicate task"),
    ("tasks", ["Enhancer"], "tasks.0"), ("privacy.epsilon", 0, "privacy.epsilon"),
    ("privacy.epsilon", -3, "privacy.epsilon"), ("privacy.epsilon", 1e9, "privacy.epsilon"),
    ("privacy.epsilon", "lots", "privacy.epsilon"), ("privacy.epsilon", float("inf"), "privacy.epsilon"),
    ("privacy.delta", 0, "privacy.delta"), ("privacy.delta", 1, "privacy.delta"),
    ("privacy.delta", -1e-5, "privacy.delta"), ("privacy.max_grad_norm", 0, "privacy.max_grad_norm"),
    ("privacy.accountant", "gdp", "privacy.accountant"), ("privacy.planned_rounds", 0, "privacy.planned_rounds"),
    ("privacy.noise_multiplier", 1.0, "exactly one of"), ("privacy.share_evaluation", "maybe", "share_evaluation"),
    ("privacy.budget", 3, "privacy.budget"), ("device", "tpu", "device"), ("size", 0, "size"),
    ("max_model_parameters", 10, "max_model_parameters"), ("training.learning_rate", -1, "learning_rate"),
    ("training.batch_size", 0, "batch_size"), ("training.local_epochs", 0, "local_epochs"),
    ("training.trainable", "some", "trainable"), ("data_dir", "x", "not both"),
    ("training.weights_after_clipping", {"enhancer": [0.5, 1.5]}, "weights_after_clipping"),
    ("training.weights_after_clipping", {"enhancer": [0.5, 0.5, 1.0]}, "has 2 classes"),
    ("training.weights_after_clipping", {"splice": [1.0, 1.0, 1.0]}, "not one of the tasks"),
    ("training.kmer_path_lr_scale", {"splice": 2.0}, "kmer_path_lr_scale: 'splice' is not one of the tasks"),
    ("data.enhancer", {}, "exactly one of"), ("data.enhancer", {"table": "t.tsv", "gue": "g"}, "exactly one of"),
    ("data.enhancer", {"positives": ["p.fa"]}, "positives need negatives"),
    ("data.enhancer", {"bed": "b.bed"}, "bed and reference go together"),
    ("data.enhancer", {"table": "t.tsv", "window": 10}, "window and label apply to a bed source"),
    ("data.enhancer", {"table": "t.tsv", "negatives": ["n.fa"]}, "negatives go with positives or bed"),
    ("data.enhancer", {"positives": ["p.fa"], "negatives": {"flanks": 10}}, "flanks and bed need a bed source"),
    ("data.enhancer", {"bed": "b", "reference": "r", "window": 0}, "window"),
    ("data.enhancer", {"bed": "b", "reference": "r", "negatives": {"shuffle": "trinucleotide"}}, "shuffle"),
    ("data.enhancer", {"bed": "b", "reference": "r", "negatives": {}}, "exactly one of shuffle"),
    ("data.enhancer", {"bed": "b", "reference": "r", "negatives": {"flanks": -5}}, "flanks"),
    ("data.enhancer", {"table": "t.tsv", "format": "fasta"}, "unknown key|Extra inputs"),
    ("data.promoter", {"table": "t.tsv"}, "every task needs exactly one source"),
    ("split.val", 0.95, "split"), ("split.test", 0, "split.test"), ("split.by", "plate", "split.by"),
    ("split.val", 0.85, "leaves under 10 %"), ("unknown_key", 1, "unknown_key"),
]


FEDERATION_PROBES = [
    ("name", "fed eration!", "name"), ("seed", "x", "seed"), ("tasks", ["promoter", "nope"], "neither built-in"),
    ("tasks", {"x": {"kind": "tree", "classes": ["a", "b"]}}, "tasks.x.kind"),
    ("tasks", {"x": {"kind": "sequence", "classes": ["a"]}}, "tasks.x.classes"),
    ("tasks", {"x": {"kind": "sequence", "classes": ["a", "b"], "metric": "pr_auc_mean"}}, "reports one of"),
    ("tasks", {"promoter": {"kind": "sequence", "classes": ["a", "b", "c"]}}, "built-in task"),
    ("model.d_model", 33, "d_model"), ("model.d_model", 1 << 20, "above the limit"), ("model.n_heads", 0, "n_heads"),
    ("model.max_len", 2_000_000_000, "above the limit"), ("model.dropout", 1.5, "dropout"),
    ("model.motif_kernel", 4, "motif_kernel"), ("model.kmer_linear", 9, "kmer_linear"),
    ("model.lora_rank", -1, "lora_rank"), ("model.colour", "red", "colour"),
    ("training.learning_rate", 0, "learning_rate"), ("training.warmup_fraction", 1.0, "warmup_fraction"),
    ("training.lr_schedule", "step", "lr_schedule"), ("training.clipping", "none", "clipping"),
    ("training.ema_decay", 1.0, "ema_decay"), ("training.trainable", "lora", "lora_rank"),
    ("training.label_smoothing", 1.0, "label_smoothing"), ("training.label_smoothing", -0.1, "label_smoothing"),
    ("training.weights_after_clipping", {"promoter": [0.5, 2.0]}, "weights_after_clipping"),
    ("training.weights_after_clipping", {"promoter": "heavy"}, "weights_after_clipping"),
    ("federation.rounds", 0, "federation.rounds"), ("federation.fraction_train", 0, "fraction_train"),
    ("federation.fraction_evaluate", 2, "fraction_evaluate"), ("federation.round_timeout_s", 0, "round_timeout_s"),
    ("aggregation.mode", "median", "aggregation.mode"), ("aggregation.species_weights", {"human": 0}, "> 0"),
    ("aggregation.species_weights", {"Homo Sapiens": 1}, "species_weights"),
    ("aggregation.max_update_norm", -1, "max_update_norm"), ("central_evaluation.batch_size", 0, "batch_size"),
    ("data.n_per_task", 0, "n_per_task"), ("data.difficulty", 2, "difficulty"),
    ("institutions", [{"name": "a", "species": "human", "tasks": ["splice"]}], "not federation tasks"),
    ("institutions", [{"name": "a", "species": "human", "tasks": ["promoter"]}] * 2, "duplicate names"),
    ("resume", "perhaps", "resume"), ("bogus", 1, "bogus"),
]


CONFIG_PROBES = ([("institution", *probe) for probe in INSTITUTION_PROBES]
                 + [("federation", *probe) for probe in FEDERATION_PROBES])
LOADERS = {"institution": (INSTITUTION, load_institution),
           "federation": (FEDERATION, lambda path: load_config(path, FederationConfig))}


@pytest.mark.parametrize("kind, key, value, message", CONFIG_PROBES,
                         ids=[f"{kind}:{k}={str(v)[:20]}" for kind, k, v, _ in CONFIG_PROBES])
def test_a_bad_config_file_is_a_config_error_and_changes_nothing(tmp_path, kind, key, value, message):
    base, load = LOADERS[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(mutated(base, key, value)))
    before = tree_hash(tmp_path)

    with pytest.raises(ConfigError, match=rf"{kind}\.yaml:(.|\n)*({message})"):
        load(path)
    assert tree_hash(tmp_path) == before


RAW_PROBES = [
    (b"", "empty config file"), (b"- a\n- b\n", "expected a mapping|Input should be"),
    (b"name: [unclosed\n", "not valid YAML"), (b"\xef\xbb\xbfname: \xc3\x28\n", "not UTF-8"),
    (b"a: 1\na: 2\n", "duplicate key 'a'"), (b"privacy:\n  epsilon: 1\n  epsilon: 50\n", "duplicate key 'epsilon'"),
    (b"name: !!python/object/apply:os.system ['true']\n", "not valid YAML|could not determine a constructor"),
    (b"x: &a [1]\n" + b"".join(b"y%d: *a\n" % i for i in range(80)), "more than 64 aliases"),
    (b"name: " + b"a" * (2 << 20) + b"\n", "at most"),
]


@pytest.mark.parametrize("raw, message", RAW_PROBES, ids=[m[:24] for _, m in RAW_PROBES])
def test_raw_config_bytes_are_refused_naming_the_file(tmp_path, raw, message):
    path = tmp_path / "federation.yaml"
    path.write_bytes(raw)
    before = tree_hash(tmp_path)

    with pytest.raises(ConfigError, match=rf"federation\.yaml(.|\n)*({message})"):
        load_config(path, FederationConfig)
    assert tree_hash(tmp_path) == before


# ---------------------------------------------------------------- data sources


def fasta(path: Path, text: str) -> None:
    path.write_text(text)


DATA_PROBES = [
    ({"pos.fa": ">a\nACGT\n", "neg.fa": ""}, DataError, r"neg\.fa: FASTA file holds no records"),
    ({"pos.fa": "ACGT\n", "neg.fa": ">b\nACGT\n"}, DataError, r"pos\.fa, line 1: sequence 'ACGT' before"),
    ({"pos.fa": ">a\nACGT\n>a\nACGA\n", "neg.fa": ">b\nACGT\n"}, DataError, r"pos\.fa, line 3: id 'a' already used"),
    ({"pos.fa": ">a\nAC#T\n", "neg.fa": ">b\nACGT\n"}, DataError, r"pos\.fa, line 2"),
    ({"pos.fa": ">\nACGT\n", "neg.fa": ">b\nACGT\n"}, DataError, r"pos\.fa, line 1: empty header"),
    ({"pos.fa": ">a\n", "neg.fa": ">b\nACGT\n"}, DataError, r"pos\.fa, line 1 \(record 'a'\): empty record"),
    ({"neg.fa": ">b\nACGT\n"}, MissingFileError, r"pos\.fa: FASTA file of class 1 not found"),
    ({"pos.fa": b"\x1f\x8b\x08garbage", "neg.fa": ">b\nACGT\n"}, DataError, r"pos\.fa"),
    ({"pos.fa": ">a\n\xff\xfe\n".encode("latin-1"), "neg.fa": ">b\nACGT\n"}, DataError, r"pos\.fa"),
]


@pytest.mark.parametrize("files, error, message", DATA_PROBES, ids=[m[:30] for _, _, m in DATA_PROBES])
def test_bad_source_files_name_file_and_line_and_change_nothing(tmp_path, files, error, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    path = tmp_path / "institution.yaml"
    path.write_text(yaml.safe_dump(INSTITUTION))
    config = load_institution(path)
    before = tree_hash(tmp_path)

    with pytest.raises(error, match=message):
        institution_splits(config.data, config.split, species=config.species)
    assert tree_hash(tmp_path) == before


# ---------------------------------------------------------------- ledgers


def good_ledger(state: Path) -> dict:
    ledger = PrivacyLedger.open(state, institution="lab-a", budget_epsilon=8.0, delta=1e-5)
    ledger.record_round(run_id="r", round=1, noise_multiplier=1.0, sample_rate=0.01, steps=100)
    return json.loads((state / LEDGER_FILENAME).read_text())


def _resigned(document: dict, state: Path) -> dict:  # resealed by someone holding the key
    from client.privacy.ledger_file import _mac
    document["mac"] = _mac(bytes.fromhex((state / "privacy_ledger.key").read_text()), document["payload"])
    return document


LEDGER_PROBES = [
    (lambda d, s: b"", "not valid JSON"),
    (lambda d, s: b"\xff\xfe", "not UTF-8"),
    (lambda d, s: json.dumps(d)[:-40].encode(), "not valid JSON"),
    (lambda d, s: json.dumps({**d, "format": "x"}).encode(), "not a helixfed privacy ledger"),
    (lambda d, s: json.dumps({**d, "version": 99}).encode(), "version 99 is not supported"),
    (lambda d, s: json.dumps({**d, "payload": []}).encode(), "no 'payload' object"),
    (lambda d, s: json.dumps({**d, "payload": {**d["payload"], "history": []}}).encode(), "MAC mismatch"),
    (lambda d, s: json.dumps(_resigned({**d, "payload": {**d["payload"], "history": []}}, s)).encode(),
     "'history' does not match its 'rounds'"),
    (lambda d, s: json.dumps(_resigned({**d, "payload": {**d["payload"], "delta": 7}}, s)).encode(), "delta"),
    (lambda d, s: json.dumps(_resigned({**d, "payload": {**d["payload"], "institution": 3}}, s)).encode(), "institution"),
    (lambda d, s: json.dumps(_resigned({**d, "payload": {**d["payload"], "accountant": "gdp"}}, s)).encode(),
     "accountant"),
    (lambda d, s: json.dumps(d).replace('"budget_epsilon": 8.0', '"budget_epsilon": NaN').encode(),
     "non-finite|not valid JSON"),
    (lambda d, s: json.dumps({**d, "mac": d["mac"].upper()}).encode(), "MAC mismatch"),
    (lambda d, s: json.dumps({k: v for k, v in d.items() if k != "mac"}).encode(), "MAC mismatch"),
    (lambda d, s: json.dumps({**d, "version": 1, "checksum": "sha256:00"}).encode(), "unkeyed .*downgrade"),
]


@pytest.mark.parametrize("damage, message", LEDGER_PROBES, ids=[m[:28] for _, m in LEDGER_PROBES])
def test_a_damaged_ledger_stops_the_agent_and_is_never_replaced(tmp_path, damage, message):
    document = good_ledger(tmp_path)
    (tmp_path / LEDGER_FILENAME).write_bytes(damage(document, tmp_path))
    before = tree_hash(tmp_path)

    with pytest.raises(LedgerError, match=message):
        PrivacyLedger.open(tmp_path, institution="lab-a", budget_epsilon=8.0, delta=1e-5)
    assert tree_hash(tmp_path) == before
