"""End to end through Flower's simulation engine (real SuperLink, real Ray, real Opacus):
the tiny federation, resume, `flwr run .`, and no process left behind."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.privacy.ledger import PrivacyLedger
from common.checkpoint import load_model
from common.model import GenomicTransformer
from common.synthetic.cli import synth_from_config
from server.ops.processes import ProcessGroup, run_status, started_run_id
from server.ops.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
INSTITUTIONS = {"oslo-uh", "jackson-lab", "ecoli-reference"}
pytestmark = pytest.mark.timeout(600)


def flower_processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (ours and nobody else's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (entry / "environ").read_bytes().decode(errors="replace")
                state = (entry / "stat").read_text().split()[2]
            except OSError:
                continue
            if state != "Z" and (str(path) in cmdline or str(path) in environ):
                found.append(cmdline)
    return found


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for events in sorted(directory.glob("events.out.tfevents.*")):  # one file per writer (a resume adds one)
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            runs.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in runs.items()}


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("tiny-data") / "data"
    synth_from_config(TINY, data)
    return data


def prepared_out(tmp_path: Path, tiny_data: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    (out / "data").symlink_to(tiny_data)  # data_dir defaults to <output_dir>/data
    return out


# One federation, two runs: round 1, then a resume to round 2, which must end exactly as an
# uninterrupted two-round run would be checked (each simulation costs a minute or more on 2 cores).
def test_two_rounds_end_to_end_with_a_resume_that_keeps_round_one(tmp_path, tiny_data):
    out = prepared_out(tmp_path, tiny_data)
    first = simulate(TINY, out_dir=out, rounds=1, timeout=500)
    assert [line.round for line in first] == [0, 1]
    assert flower_processes_under(out) == []

    history = simulate(TINY, out_dir=out, rounds=2, resume=True, timeout=500)

    assert [line.round for line in history] == [0, 1, 2]
    assert history[:2] == first  # rounds 0 and 1 exactly as they were
    assert read_metrics(out) == [line.to_json() for line in history]
    last = history[-1]
    assert set(last.central) == {"promoter", "splice", "coding", "enhancer"}
    assert "human" in last.central["promoter"]["species"]
    assert set(last.institutions) == INSTITUTIONS
    for name in INSTITUTIONS:  # the ledgers went on from round 1, and the server reports what they say
        ledger = PrivacyLedger.load(out / "state" / name)
        assert [r.round for r in ledger.rounds] == [1, 2]
        assert last.epsilon[name] == pytest.approx(ledger.epsilon(), rel=1e-9)
        assert ledger.epsilon() <= ledger.budget_epsilon
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round-0001", "round-0002"]
    model, checkpoint = load_model(out / "final")  # loadable by common alone
    assert checkpoint.round == 2 and model.tasks == ("promoter", "splice", "coding", "enhancer")
    # Portable (issue 15): safetensors + config.json + a model card whose ε is each ledger's
    final = out / "final"
    assert {f.name for f in final.iterdir()} == {"model.safetensors", "config.json", "checkpoint.json", "README.md"}
    assert GenomicTransformer.from_pretrained(final).state_dict().keys() == model.state_dict().keys()
    card = (final / "README.md").read_text()
    for name in INSTITUTIONS:
        ledger = PrivacyLedger.load(out / "state" / name)
        assert f"| {name} | " in card and f"| {ledger.epsilon():.4f} | {ledger.delta} |" in card
        assert f"| {ledger.accountant} |" in card
        recorded = checkpoint.state["privacy"]["institutions"][name]
        assert recorded["epsilon"] == pytest.approx(ledger.epsilon(), rel=1e-9)
    assert checkpoint.state["config"]["name"] == "tiny" and set(checkpoint.state["data"]) == INSTITUTIONS
    assert "| promoter | all | mcc |" in card and "k-mer baseline" in card
    # TensorBoard (issue 15): the server's scalars (what it may know) under the output directory, each
    # institution's local-training curves under its own state directory; steps are rounds, resume included
    server_scalars = tensorboard_scalars(out / "tensorboard")
    assert [step for step, _ in server_scalars["central/promoter/mcc/all"]] == [0, 1, 2]
    assert server_scalars["epsilon/oslo-uh"][-1][1] == pytest.approx(last.epsilon["oslo-uh"], rel=1e-6)
    assert "central/promoter/mcc/human" in server_scalars and not any("loss" in t and "local" in t
                                                                      for t in server_scalars)
    local = tensorboard_scalars(out / "state" / "oslo-uh" / "tensorboard")
    assert [step for step, _ in local["local/loss/promoter"]] == [1, 2] and "local/epsilon" in local
    report = (out / "report.md").read_text()
    assert "| promoter | human | mcc |" in report and "| oslo-uh | human | 2 |" in report
    assert {p.name for p in (out / "plots").iterdir()} >= {"promoter.png", "splice.png", "epsilon.png"}
    events = [json.loads(line)["event"] for line in (out / "audit.jsonl").read_text().splitlines()]
    assert events.count("trained") == 6 and "resumed" in events and "run_finished" in events
    assert flower_processes_under(out) == []


def test_flwr_run_dot_as_a_flower_user_types_it(tmp_path, tiny_data):
    """Issue 15: with a fresh FLWR_HOME, `flwr run .` and nothing else runs the app's default
    federation on Flower's default local simulation (2 SuperNodes), generating its data; server and
    simulated institutions agree on every directory (Flower loads the ClientApps from the editable
    install, the ServerApp from the installed FAB); `flwr log` shows each round once. Then the README's
    way to more nodes and another config: `--run-config` and `--federation-config`."""
    flwr_home = tmp_path / "flwr-home"
    group = ProcessGroup(flwr_home)
    group.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(_free_port())
    group.env["FLWR_LOCAL_CONTROL_API_PORT"] = str(_free_port())
    try:
        result = subprocess.run(["flwr", "run", ".", "--stream"], cwd=ROOT, env=group.env, capture_output=True,
                                text=True, timeout=500)
        streamed = result.stdout + result.stderr
        run_id = started_run_id(streamed)
        assert run_id is not None, streamed[-3000:]
        assert run_status(group, "local", run_id) == "finished:completed", streamed[-3000:]
        outputs = list((flwr_home / "apps").glob("*/runs/quickstart"))
        assert len(outputs) == 1, "outputs go where the FAB's configs/quickstart.yaml says: ../runs/quickstart"
        out = outputs[0]
        assert [line["round"] for line in read_metrics(out)] == [0, 1, 2, 3]
        assert {p.name for p in (out / "state").iterdir()} == {"oslo-uh", "jackson-lab"}  # the same directory
        assert not (ROOT / "runs" / "quickstart").exists(), "a simulated institution wrote into the checkout"
        epsilon = read_metrics(out)[-1]["institutions"]["oslo-uh"]["epsilon"]
        assert PrivacyLedger.load(out / "state" / "oslo-uh").epsilon() == pytest.approx(epsilon)
        logged = group.run(["flwr", "log", str(run_id), "local", "--show"], timeout=60).stdout
        for round_number in (1, 2, 3):
            assert logged.count(f"round {round_number}/3 ") == 1, logged[-3000:]
        assert f"outputs in {out}" in logged and "finished; report" in logged

        more = tmp_path / "run"
        more.mkdir()
        (more / "data").symlink_to(tiny_data)
        result = subprocess.run(
            ["flwr", "run", ".", "--stream", "--federation-config", "num-supernodes=3",
             "--run-config", f'config-file="configs/tiny.yaml" out-dir="{more}" num-server-rounds=1'],
            cwd=ROOT, env=group.env, capture_output=True, text=True, timeout=500)
        run_id = started_run_id(result.stdout + result.stderr)
        assert run_status(group, "local", run_id) == "finished:completed", (result.stdout + result.stderr)[-3000:]
        assert [line["round"] for line in read_metrics(more)] == [0, 1]
        assert {p.name for p in (more / "state").iterdir()} == INSTITUTIONS
    finally:
        group.stop()  # the managed SuperLink outlives `flwr run`; it carries our tag
    assert group.alive() == []


def test_stop_also_ends_untagged_processes_in_our_sessions(tmp_path):
    """Ray's agents overwrite their environment with their process title, so the tag is gone; they
    stay in the session of the process that started them, and stop() ends that session too."""
    group = ProcessGroup(tmp_path / "flwr-home")
    pid_file = tmp_path / "grandchild.pid"
    # us -> child (tagged; as flower-superlink) -> middle (tagged, own session; as flower-superexec)
    # -> grandchild (untagged, in the middle's session; as ray::DashboardAgent)
    grandchild_code = (f"import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', "
                       f"'import time; time.sleep(300)'], env={{}}); open({str(pid_file)!r}, 'w').write(str(g.pid)); "
                       f"time.sleep(300)")
    spawn = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild_code!r}], "
             f"start_new_session=True); time.sleep(300)")
    group.start([sys.executable, "-c", spawn])
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert b"HELIXFED_RUN_TAG" not in Path(f"/proc/{grandchild}/environ").read_bytes()

    group.stop(grace=2.0)

    time.sleep(0.5)
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]
    assert group.alive() == []


def _free_port() -> int:
    from server.ops.processes import free_port

    return free_port()


def test_cli_exit_code_is_non_zero_when_the_run_fails(tmp_path, tiny_data):
    out = prepared_out(tmp_path, tiny_data)
    broken = tmp_path / "broken.yaml"  # a task whose central data is fine but a model the data cannot fit
    broken.write_text(TINY.read_text().replace("max_len: 192", "max_len: 100"))
    result = subprocess.run([sys.executable, "-m", "common.cli", "simulate", "--config", str(broken),
                             "--out", str(out), "--rounds", "1", "--timeout", "300"],
                            capture_output=True, text=True, timeout=400, env={**os.environ})
    assert result.returncode == 1
    assert "simulation failed" in result.stderr
    assert flower_processes_under(out) == []


def test_declared_tasks_species_and_own_files_run_end_to_end(tmp_path):
    """Issue 13: a federation declares its own 3-class task; two institutions of species the generator
    does not know join with FASTA files (one per class) and a GUE folder; nothing is generated. Issue 16,
    in the same simulation (each costs a minute on 2 cores): the round is secure (Flower's SecAgg+ between
    the simulated institutions and the ServerApp) and the server adds institution-level DP noise to the
    unmasked sum."""
    import numpy as np
    import yaml

    from common.data.dataset import Record
    from common.data.writers import write_split_tables

    rng = np.random.default_rng(0)
    motifs = {"unbound": "", "weak": "TGACTCA", "strong": "TGACTCATGACTCA"}

    def sequences(n: int, motif: str) -> list[str]:
        out = []
        for _ in range(n):
            s = "".join(rng.choice(list("ACGT"), size=100))
            at = int(rng.integers(0, 100 - len(motif) + 1))
            out.append(s[:at] + motif + s[at + len(motif):])
        return out

    institutions = []
    for name, species in (("cress-lab", "arabidopsis_thaliana"), ("rat-lab", "rattus_norvegicus")):
        folder = tmp_path / name
        folder.mkdir()
        classes = {}
        for cls, motif in motifs.items():
            path = folder / f"{cls}.fa"
            path.write_text("".join(f">{name}-{cls}-{i}\n{s}\n" for i, s in enumerate(sequences(60, motif))))
            classes[cls] = [str(path)]
        gue = folder / "gue"
        gue.mkdir()
        for split, n in (("train", 60), ("dev", 10), ("test", 10)):
            rows = [(s, 1) for s in sequences(n // 2, "TATAAAAG")] + [(s, 0) for s in sequences(n // 2, "")]
            (gue / f"{split}.csv").write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
        institutions.append({"name": name, "species": species, "tasks": ["tf_binding", "promoter"],
                             "data": {"tf_binding": {"classes": classes}, "promoter": {"gue": str(gue)}},
                             "privacy": {"epsilon": 8.0, "delta": 1e-4, "planned_rounds": 2}})
    central = tmp_path / "central"
    records = [Record(f"c-{cls}-{i}", s, label, "rattus_norvegicus")
               for label, (cls, motif) in enumerate(motifs.items()) for i, s in enumerate(sequences(20, motif))]
    (central / "tf_binding").mkdir(parents=True)
    write_split_tables(central / "tf_binding", {"test": records})
    config = {
        "name": "declared", "seed": 1,
        "tasks": {"tf_binding": {"kind": "sequence", "classes": list(motifs), "metric": "mcc"}, "promoter": None},
        "model": {"d_model": 32, "n_heads": 4, "n_layers": 1, "d_ff": 64, "max_len": 128, "kmer_linear": 3},
        "training": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.003},
        "federation": {"rounds": 1, "min_train_institutions": 2, "min_available_institutions": 2},
        "aggregation": {"mode": "species_balanced", "species_weights": {"rattus_norvegicus": 2.0},
                        "central_dp": {"noise_multiplier": 0.5, "clip": 50.0},  # issue 16: institution-level DP
                        "secure": {"timeout_s": 300}},  # issue 16: secure aggregation
        "central_evaluation": {"baselines": False, "data_dir": str(central)},
        "output_dir": str(tmp_path / "run"), "institutions": institutions,
    }
    config_file = tmp_path / "federation.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    history = simulate(config_file, out_dir=tmp_path / "run", rounds=1, timeout=500)

    last = history[-1]
    assert {name: info.status for name, info in last.institutions.items()} == {"cress-lab": "trained",
                                                                               "rat-lab": "trained"}
    assert set(last.central["tf_binding"]["species"]) == {"rattus_norvegicus"}
    assert "mcc" in last.central["tf_binding"]
    assert not (tmp_path / "run" / "data").exists()  # nothing generated
    model, checkpoint = load_model(tmp_path / "run" / "final")
    assert checkpoint.tasks == ("tf_binding", "promoter")
    assert model.heads["tf_binding"].kmers.linear.out_features == 3
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["task_declarations"]["tf_binding"][
        "classes"] == ["unbound", "weak", "strong"]
    from server.central_dp import institution_epsilon  # the server noised the round and says what it cost
    assert last.central_dp["epsilon"] == pytest.approx(institution_epsilon(noise_multiplier=0.5, rounds=1, delta=1e-5))
    assert set(last.central_dp["noise_std"]) >= {"<backbone>", "tf_binding"}
    assert "institution-level ε" in (tmp_path / "run" / "report.md").read_text()
    events = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").read_text().splitlines()]
    assert [e["in_sum"] for e in events if e["event"] == "secure_round"] == [["cress-lab", "rat-lab"]]
    for name in ("cress-lab", "rat-lab"):  # each ledger charged once, and the server reports what it says
        ledger = PrivacyLedger.load(tmp_path / "run" / "state" / name)
        assert len(ledger.rounds) == 1 and last.epsilon[name] == pytest.approx(ledger.epsilon(), rel=1e-9)
    assert flower_processes_under(tmp_path / "run") == []
