"""The gRPC evaluation service: a real server on loopback, real channels, every RPC, health,
reflection, refused input, concurrent clients, and the serve/query commands."""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.analysis import cli as analysis_cli
from common.analysis.scoring import Variant, attention_maps, predict_sequences, score_variants
from common.checkpoint import load_model, save_checkpoint
from common.data.dataset import GenomicDataset, Record
from common.evaluation import evaluate
from common.model import GenomicTransformer, ModelConfig
from server.service import client
from server.service import helixfed_pb2 as pb
from server.service.server import SERVICE_NAME, ServiceLimits, start_server

MAX_BATCH, MAX_LENGTH = 8, 100
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0, max_len=128)
    model = GenomicTransformer(config, tasks=("promoter", "splice"))
    return save_checkpoint(tmp_path_factory.mktemp("service") / "final", weights=model.state_dict(),
                           model_config=config, tasks=model.tasks, round=4)


@pytest.fixture(scope="module")
def model(checkpoint_dir):
    return load_model(checkpoint_dir)


@pytest.fixture(scope="module")
def server(model):
    loaded, checkpoint = model
    # Every test client shares 127.0.0.1: let one address use all four threads (the default keeps one back).
    limits = ServiceLimits(max_batch=MAX_BATCH, max_length=MAX_LENGTH, max_workers=4, max_concurrent_rpcs=64,
                           max_rpcs_per_client=4)
    running = start_server(model=loaded, checkpoint=checkpoint, port=0, limits=limits)
    yield running
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as open_channel:
        yield open_channel


@pytest.fixture(scope="module")
def stub(channel):
    return client.pb_grpc.HelixfedStub(channel)


def random_sequences(seed: int, count: int, low: int = 20, high: int = 90) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), size=int(rng.integers(low, high)))) for _ in range(count)]


# ---------------------------------------------------------------- every RPC


def test_predict_sequence_task(stub, model):
    sequences = random_sequences(0, 5)

    response = stub.Predict(pb.PredictRequest(task="promoter", sequences=sequences), timeout=30)

    expected = predict_sequences(model[0], sequences=sequences, task="promoter")
    assert list(response.class_names) == ["non-promoter", "promoter"]
    got = client.response_probabilities("promoter", response)
    np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=1e-6)
    assert [p.label for p in response.predictions] == [
        "promoter" if e[1] > e[0] else "non-promoter" for e in expected]


def test_predict_per_position_task(stub, model):
    sequences = random_sequences(1, 3)

    response = stub.Predict(pb.PredictRequest(task="splice", sequences=sequences), timeout=30)

    expected = predict_sequences(model[0], sequences=sequences, task="splice")
    for prediction, sequence, probabilities in zip(response.predictions, sequences, expected, strict=True):
        assert len(prediction.positions) == len(sequence)
        np.testing.assert_allclose([list(p.probabilities) for p in prediction.positions], probabilities, atol=1e-6)


def test_score_variants(stub, model):
    pairs = [pb.VariantPair(id="snv", ref="GCGCTATAAAAGGCG", alt="GCGCTAGAAAAGGCG", task="promoter"),
             pb.VariantPair(id="del", ref="GCGCTATAAAAGGCG", alt="GCGCTAAAAGGCG")]

    response = stub.ScoreVariants(pb.ScoreVariantsRequest(pairs=pairs), timeout=30)

    expected = score_variants(model[0], variants=[Variant(p.id, p.ref, p.alt, p.task or None) for p in pairs])
    for got, want in zip(response.scores, expected, strict=True):
        assert (got.id, got.task, got.label) == (want.id, want.task, want.label)
        assert got.score == pytest.approx(want.score, abs=1e-6)
        assert got.attention_change == pytest.approx(want.attention_change, abs=1e-6)
        assert dict(got.delta_probability) == pytest.approx(want.delta_probability, abs=1e-6)


def test_attention_default_is_last_layer_mean_over_heads(stub, model):
    sequence = "GCGCGCTATAAAAGGCGCGC"

    response = stub.Attention(pb.AttentionRequest(sequence=sequence), timeout=30)

    weights = np.array(response.weights).reshape(len(sequence), len(sequence))
    expected = attention_maps(model[0], sequence=sequence).select(layer=-1)
    assert (response.layer, response.head, response.num_layers, response.num_heads) == (1, -1, 2, 4)
    assert "".join(response.tokens) == sequence
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert len(response.received) == len(response.entropy) == len(sequence)
    assert 0.0 < response.sequence_entropy <= 2.0


def test_attention_one_layer_and_head(stub, model):
    response = stub.Attention(pb.AttentionRequest(sequence="ACGTACGTAA", layer=0, head=2), timeout=30)

    expected = attention_maps(model[0], sequence="ACGTACGTAA").select(layer=0, head=2)
    assert (response.layer, response.head) == (0, 2)
    np.testing.assert_allclose(np.array(response.weights).reshape(10, 10), expected, atol=1e-6)


def test_evaluate_matches_local_evaluation(stub, model):
    sequences = random_sequences(2, 6)
    examples = [pb.LabelledSequence(id=f"e{i}", sequence=s, label=i % 2, species="human" if i < 3 else "mouse")
                for i, s in enumerate(sequences)]

    response = stub.Evaluate(pb.EvaluateRequest(task="promoter", examples=examples), timeout=30)

    records = [Record(e.id, e.sequence, e.label, e.species) for e in examples]
    expected = evaluate(model[0], GenomicDataset(records, task="promoter"), by_species=True)
    assert response.num_examples == 6
    assert set(response.by_species) == {"human", "mouse"}
    assert response.metrics.values["accuracy"] == pytest.approx(expected["accuracy"])
    assert response.metrics.values["loss"] == pytest.approx(expected["loss"], abs=1e-6)


def test_evaluate_per_position_task(stub):
    examples = [pb.LabelledSequence(sequence="ACGTAGGTAAG", labels=[0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0])]

    response = stub.Evaluate(pb.EvaluateRequest(task="splice", examples=examples), timeout=30)

    assert "pr_auc_mean" in response.metrics.values
    assert math.isnan(response.metrics.values["pr_auc_mean"]) or 0 <= response.metrics.values["pr_auc_mean"] <= 1


def test_model_info(stub, checkpoint_dir):
    info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=30)

    assert [t.name for t in info.tasks] == ["promoter", "splice"]
    assert info.tasks[1].kind == "position"
    assert list(info.tasks[1].class_names) == ["neither", "donor", "acceptor"]
    assert (info.round, info.num_layers, info.num_heads) == (4, 2, 4)
    assert (info.max_batch, info.max_length) == (MAX_BATCH, MAX_LENGTH)
    assert info.checkpoint == checkpoint_dir.name == "final"  # a name: no filesystem path leaves
    assert '"d_model": 32' in info.model_config_json


# ---------------------------------------------------------------- health and reflection


def test_health_check(channel):
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING

    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == serving
    assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10).status == serving
    with pytest.raises(grpc.RpcError) as error:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services_and_serves_the_proto(channel):
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)]

    listed, described = list(reflection.ServerReflectionInfo(iter(requests), timeout=10))

    names = {s.name for s in listed.list_services_response.service}
    assert {"helixfed.v1.Helixfed", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    proto = descriptor_pb2.FileDescriptorProto.FromString(described.file_descriptor_response.file_descriptor_proto[0])
    assert proto.package == "helixfed.v1"
    assert [m.name for m in proto.service[0].method] == ["Predict", "ScoreVariants", "Attention", "Evaluate",
                                                        "ModelInfo"]


# ---------------------------------------------------------------- refused input


BAD_REQUESTS = [
    ("Predict", pb.PredictRequest(task="enhancer", sequences=["ACGT"]), "unknown task 'enhancer'"),
    ("Predict", pb.PredictRequest(task="promoter", sequences=["ACGT", "ACXGT"]),
     "sequence 1, position 3: unknown character 'X'"),
    ("Predict", pb.PredictRequest(task="promoter", sequences=["ACGT", ""]), "sequence 1: empty sequence"),
    ("Predict", pb.PredictRequest(task="promoter", sequences=["A" * (MAX_LENGTH + 1)]),
     f"sequence 0: length {MAX_LENGTH + 1} exceeds max_len {MAX_LENGTH}"),
    ("Predict", pb.PredictRequest(task="promoter", sequences=["ACGT"] * (MAX_BATCH + 1)),
     f"batch of {MAX_BATCH + 1} sequences exceeds the server's max batch {MAX_BATCH}"),
    ("Predict", pb.PredictRequest(task="promoter"), "empty request"),
    ("ScoreVariants", pb.ScoreVariantsRequest(pairs=[pb.VariantPair(id="ok", ref="ACGT", alt="ACGA"),
                                                     pb.VariantPair(id="v2", ref="ACGT", alt="AC-A")]),
     "pair 1 \\('v2'\\) alt, position 3: unknown character '-'"),
    ("ScoreVariants", pb.ScoreVariantsRequest(pairs=[pb.VariantPair(id="v", ref="ACGT", alt="ACGA", task="coding")]),
     "unknown task 'coding'"),
    ("Attention", pb.AttentionRequest(sequence="ACGTN", layer=5), "layer 5 out of range"),
    ("Attention", pb.AttentionRequest(sequence="ACGTN", head=4), "head 4 out of range"),
    ("Attention", pb.AttentionRequest(sequence="AC GT"), "sequence 0, position 3: unknown character ' '"),
    ("Evaluate", pb.EvaluateRequest(task="splice", examples=[pb.LabelledSequence(id="s", sequence="ACGT", labels=[0])]),
     "example 0 \\('s'\\): 1 labels for 4 bases"),
    ("Evaluate", pb.EvaluateRequest(task="promoter", examples=[pb.LabelledSequence(id="p", sequence="ACGT", label=7)]),
     "record 'p': label 7 outside 0..1"),
]


@pytest.mark.parametrize(("method", "request_message", "message"), BAD_REQUESTS,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD_REQUESTS)])
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(stub, method, request_message, message):
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request_message, timeout=30)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, error.value.details()), error.value.details()
    assert stub.Predict(pb.PredictRequest(task="promoter", sequences=["ACGT"]), timeout=30).predictions


# ---------------------------------------------------------------- concurrency


def test_many_concurrent_clients_get_their_own_answers(server, model):
    batches = [random_sequences(100 + i, 4) for i in range(16)]
    expected = [predict_sequences(model[0], sequences=b, task="promoter") for b in batches]
    answers: dict[int, list[np.ndarray]] = {}
    failures: list[BaseException] = []

    def ask(index: int) -> None:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as own_channel:
                stub = client.pb_grpc.HelixfedStub(own_channel)
                for _ in range(3):
                    response = stub.Predict(pb.PredictRequest(task="promoter", sequences=batches[index]), timeout=60)
                    answers.setdefault(index, []).append(np.stack(client.response_probabilities("promoter", response)))
        except BaseException as err:  # collected and asserted on the main thread
            failures.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not failures
    for index, want in enumerate(expected):
        assert len(answers[index]) == 3
        for got in answers[index]:
            np.testing.assert_allclose(got, np.stack(want), atol=1e-5)


# ---------------------------------------------------------------- commands


def analysis_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="helixfed")
    subparsers = parser.add_subparsers()
    analysis_cli.add_predict_parser(subparsers)
    client.add_query_parser(subparsers)
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_predictions_equal_the_predict_command(server, stub, checkpoint_dir, tmp_path):
    sequences = random_sequences(7, 6)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)))
    out = tmp_path / "predict.tsv"
    for task in ("promoter", "splice"):
        assert analysis_command("predict", "--checkpoint", str(checkpoint_dir), "--task", task,
                                "--input", str(fasta), "--out", str(out)) == 0
        rows = list(csv.DictReader(io.StringIO(out.read_text()), delimiter="\t"))

        response = stub.Predict(pb.PredictRequest(task=task, sequences=sequences), timeout=30)

        served = client.response_probabilities(task, response)
        flat = np.concatenate([p.reshape(-1, p.shape[-1]) for p in served])
        columns = [c for c in rows[0] if c.startswith("p_")]
        np.testing.assert_allclose([[float(r[c]) for c in columns] for r in rows], flat, atol=1e-5)
        labels = [p.label for pred in response.predictions for p in pred.positions] if task == "splice" \
            else [p.label for p in response.predictions]
        assert [r["label"] for r in rows] == labels


def test_query_command_prints_what_predict_prints(server, checkpoint_dir, tmp_path, capsys):
    sequence = "GCGCGCTATAAAAGGCGCGC"
    fasta = tmp_path / "one.fa"
    fasta.write_text(f">seq1\n{sequence}\n")

    assert analysis_command("predict", "--checkpoint", str(checkpoint_dir), "--task", "promoter",
                            "--input", str(fasta)) == 0
    printed_by_predict = capsys.readouterr().out
    assert analysis_command("query", "--server", f"127.0.0.1:{server.port}", "--task", "promoter",
                            "--sequence", sequence) == 0

    assert capsys.readouterr().out == printed_by_predict


def test_query_command_reports_a_refusal(server, capsys):
    assert analysis_command("query", "--server", f"127.0.0.1:{server.port}", "--task", "promoter",
                            "--sequence", "ACZT") == 1
    assert "INVALID_ARGUMENT: sequence 0, position 3: unknown character 'Z'" in capsys.readouterr().err


def test_serve_command_stops_gracefully_on_sigterm(checkpoint_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "server.service.server", "--checkpoint", str(checkpoint_dir), "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        banner = process.stdout.readline()
        assert "listening on 127.0.0.1:" in banner, process.stderr.read()
        address = banner.split("listening on ")[1].split()[0]
        probabilities = client.query(address=address, task="promoter", sequences=["ACGTACGT"], timeout=30)
        assert probabilities[0].sum() == pytest.approx(1.0)

        process.send_signal(signal.SIGTERM)

        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()


# ---------------------------------------------------------------- transport, callers, what may be served


def test_tls_and_a_token_admit_only_the_holder(model, tmp_path):
    from server.ops.certs import write_federation_certs

    write_federation_certs(out_dir=tmp_path / "tls", server_name="localhost", ips=["127.0.0.1"])
    token = "s3cret-token-for-tests-only"
    loaded, checkpoint = model
    running = start_server(model=loaded, checkpoint=checkpoint, port=0, tls_dir=tmp_path / "tls", token=token)
    address = f"localhost:{running.port}"
    try:
        probabilities = client.query(address=address, task="promoter", sequences=["ACGTACGT"], timeout=30,
                                     root_certificates=tmp_path / "tls" / "ca.crt", token=token)
        assert probabilities[0].sum() == pytest.approx(1.0)
        for wrong in (None, "not-the-token-at-all"):
            with pytest.raises(grpc.RpcError) as refused:
                client.query(address=address, task="promoter", sequences=["ACGT"], timeout=30,
                             root_certificates=tmp_path / "tls" / "ca.crt", token=wrong)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as plaintext:  # an insecure client cannot talk to a TLS server
            client.query(address=address, task="promoter", sequences=["ACGT"], timeout=5, token=token)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        channel, _ = client.connect(address, root_certificates=tmp_path / "tls" / "ca.crt")
        with channel:  # the health check stays open for load balancers
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(grace=1.0)


def test_mutual_tls_admits_only_callers_with_a_certificate_from_the_federation_ca(model, tmp_path):
    from server.ops.certs import write_client_certificates, write_federation_certs

    tls, other = tmp_path / "tls", tmp_path / "other-federation"
    write_federation_certs(out_dir=tls, server_name="localhost", ips=["127.0.0.1"], clients=["alice"])
    write_client_certificates(out_dir=tls, clients=["bob"])  # issued later by the same CA
    write_federation_certs(out_dir=other, server_name="localhost", clients=["mallory"])
    loaded, checkpoint = model
    running = start_server(model=loaded, checkpoint=checkpoint, port=0, tls_dir=tls, require_client_cert=True)
    address = f"localhost:{running.port}"

    def ask(cert: Path | None, key: Path | None):
        return client.query(address=address, task="promoter", sequences=["ACGTACGT"], timeout=10,
                            root_certificates=tls / "ca.crt", client_cert=cert, client_key=key)
    try:
        for name in ("alice", "bob"):
            assert ask(tls / "clients" / f"{name}.crt", tls / "clients" / f"{name}.key")[0].sum() == pytest.approx(1.0)
        for cert, key in ((None, None), (other / "clients" / "mallory.crt", other / "clients" / "mallory.key")):
            with pytest.raises(grpc.RpcError) as refused:  # no certificate, or one another CA signed
                ask(cert, key)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(ValueError, match="both --client-cert and --client-key"):
            ask(tls / "clients" / "alice.crt", None)
    finally:
        running.stop(grace=1.0)
    assert (tls / "clients" / "alice.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="--require-client-cert needs --tls-dir"):
        start_server(model=loaded, checkpoint=checkpoint, port=0, require_client_cert=True)


def test_a_non_dp_checkpoint_is_refused_unless_the_operator_allows_it(tmp_path, capsys):
    from server.service.server import main as serve

    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=64)
    weights = GenomicTransformer(config, tasks=("promoter",)).state_dict()
    path = save_checkpoint(tmp_path / "local", weights=weights, model_config=config, tasks=("promoter",), round=1,
                           state={"local_training": {"dp": False, "epsilon": 0.0}})

    assert serve(["--checkpoint", str(path), "--port", "0"]) == 1
    assert "trained without DP" in capsys.readouterr().err

    from common.checkpoint import checkpoint_privacy, load_checkpoint
    from common.protocol import InstitutionRound, RoundMetrics, Status
    from server.checkpoints import trained_privacy

    mixed = [RoundMetrics(1, {}, institutions={"a": InstitutionRound("human", Status.TRAINED, budget=8.0),
                                               "b": InstitutionRound("mouse", Status.TRAINED, budget=None)})]
    federated = save_checkpoint(tmp_path / "fed", weights=weights, model_config=config, tasks=("promoter",),
                                round=1, state={"privacy": trained_privacy(mixed)})
    assert checkpoint_privacy(load_checkpoint(federated)) == "non-dp"
    assert trained_privacy(mixed[:0])["dp"] is None


def test_one_client_cannot_take_every_thread(server, stub):
    from server.service.server import PerClientLimit, client_address

    limiter = server.service.per_client
    held = [limiter.acquire("ipv4:127.0.0.1") for _ in range(limiter.limit)]  # this client's share, all busy
    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(pb.PredictRequest(task="promoter", sequences=["ACGT"]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "per-client limit" in refused.value.details()
    finally:
        for _ in held:
            limiter.release("ipv4:127.0.0.1")
    assert stub.Predict(pb.PredictRequest(task="promoter", sequences=["ACGT"]), timeout=10).predictions
    assert client_address("ipv4:10.0.0.7:53124") == "ipv4:10.0.0.7" and client_address("ipv6:[::1]:80") == "ipv6:[::1]"
    one = PerClientLimit(1)
    assert one.acquire("a") and not one.acquire("a") and one.acquire("b")
