"""The helixfed evaluation service: one checkpoint served over gRPC.

    helixfed serve --checkpoint DIR --port P [--host H] [--max-batch N] [--max-length L]
                   [--max-workers W] [--max-concurrent-rpcs C] [--grace S]

RPCs (``helixfed.v1.Helixfed``, see helixfed.proto): Predict, ScoreVariants, Attention, Evaluate,
ModelInfo; plus the standard health service (``grpc.health.v1.Health``) and server reflection.

The handlers only check and translate messages; the work is :mod:`common.analysis.scoring` and
:mod:`common.evaluation`, the same functions ``helixfed predict`` and friends call, so the service
and the command line give the same answers. Every limit is bounded: sequences per request
(``max_batch``), bases per sequence (``max_length``, at most the model's ``max_len``), threads
(``max_workers``) and RPCs admitted at once (``maximum_concurrent_rpcs``; more are refused with
RESOURCE_EXHAUSTED). A bad request gets INVALID_ARGUMENT naming the item and position, and the
server goes on serving. SIGTERM or SIGINT stops it gracefully: health turns NOT_SERVING, new RPCs
are refused, RPCs in flight get ``grace`` seconds to finish.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.analysis.scoring import (
    HIGH_IMPACT_THRESHOLD,
    Variant,
    attention_entropy,
    attention_maps,
    attention_received,
    predict_sequences,
    score_variants,
    sequence_entropy,
)
from common.checkpoint import Checkpoint, checkpoint_privacy, load_model
from common.data.dataset import GenomicDataset, Record
from common.evaluation import evaluate
from common.model import GenomicTransformer
from common.tasks import get_task
from common.tokenizer import SequenceError, encode
from server.service import helixfed_pb2 as pb
from server.service import helixfed_pb2_grpc as pb_grpc
from server.service.security import (
    TokenInterceptor,
    is_loopback,
    read_token,
    server_credentials,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Helixfed"].full_name  # "helixfed.v1.Helixfed"
logger = logging.getLogger(__name__)


class InvalidRequest(ValueError):
    """A request the service refuses: the message names the item (0-based) and what is wrong."""


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds on what one server accepts.

    ``max_batch``: sequences (pairs, examples) per request. ``max_length``: bases per sequence.
    ``max_workers``: RPC threads. ``max_concurrent_rpcs``: RPCs admitted at once (running or
    queued for a thread); beyond it gRPC answers RESOURCE_EXHAUSTED.
    """

    max_batch: int = 64
    max_length: int = 512
    max_workers: int = 4
    max_concurrent_rpcs: int = 32
    # Requests one client address may have running at once; default: all threads but one, so a single
    # caller never takes every thread (only running requests count: a thread picks them up first).
    max_rpcs_per_client: int | None = None

    def __post_init__(self) -> None:
        if self.max_rpcs_per_client is None:
            object.__setattr__(self, "max_rpcs_per_client", max(1, self.max_workers - 1))
        for name in ("max_batch", "max_length", "max_workers", "max_concurrent_rpcs", "max_rpcs_per_client"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.max_concurrent_rpcs < self.max_workers:
            raise ValueError(f"max_concurrent_rpcs ({self.max_concurrent_rpcs}) must be at least "
                             f"max_workers ({self.max_workers})")


# ---------------------------------------------------------------- request checks


def _check_batch(count: int, limits: ServiceLimits, what: str) -> None:
    if count == 0:
        raise InvalidRequest(f"empty request: expected at least one {what}")
    if count > limits.max_batch:
        raise InvalidRequest(f"batch of {count} {what}s exceeds the server's max batch {limits.max_batch}")


def _check_task(model: GenomicTransformer, task: str) -> str:
    if task not in model.tasks:
        raise InvalidRequest(f"unknown task {task!r}; this model serves {', '.join(model.tasks)}")
    return task


def _check_sequences(sequences: Sequence[str], limits: ServiceLimits, *, item: str = "sequence") -> None:
    """Each sequence non-empty, within ``max_length`` and made of bases; messages name the 0-based
    item and the 1-based position (the tokenizer's wording, with ``item`` for "sequence")."""
    for index, sequence in enumerate(sequences):
        try:
            encode(sequence, index=index, max_len=limits.max_length)
        except SequenceError as err:
            raise InvalidRequest(str(err).replace("sequence", item, 1)) from err


def client_address(peer: str) -> str:
    """gRPC's ``ipv4:10.0.0.7:53124`` -> ``ipv4:10.0.0.7``: one client, whatever connection it uses."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class PerClientLimit:
    """At most ``limit`` requests in flight per client address (thread-safe)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> bool:
        with self._lock:
            if self._in_flight.get(client, 0) >= self.limit:
                return False
            self._in_flight[client] = self._in_flight.get(client, 0) + 1
            return True

    def release(self, client: str) -> None:
        with self._lock:
            left = self._in_flight.get(client, 0) - 1
            if left > 0:
                self._in_flight[client] = left
            else:
                self._in_flight.pop(client, None)


def _handler(method: Callable) -> Callable:
    """Turn a refused request into INVALID_ARGUMENT and any other failure into INTERNAL, so one bad
    request never takes the server down."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        client = client_address(context.peer())
        if not self.per_client.acquire(client):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.limits.max_rpcs_per_client} requests from {client} are in flight already "
                          f"(the server's per-client limit); wait for them")
        try:
            return method(self, request, context)
        except (InvalidRequest, SequenceError, ValueError) as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except Exception as err:  # a bug, not the caller's fault: log it, answer, keep serving
            logger.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed: {type(err).__name__}: {err}")
        finally:
            self.per_client.release(client)

    return wrapper


# ---------------------------------------------------------------- the service


def _prediction(task: str, probabilities: np.ndarray) -> pb.Prediction:
    names = get_task(task).label_names
    if get_task(task).per_position:
        positions = [pb.PositionPrediction(probabilities=row.tolist(), label=names[int(row.argmax())])
                     for row in probabilities]
        return pb.Prediction(positions=positions)
    return pb.Prediction(probabilities=probabilities.tolist(), label=names[int(probabilities.argmax())])


class HelixfedService(pb_grpc.HelixfedServicer):
    """The RPC handlers of one loaded model (eval mode; read-only, so threads share it)."""

    def __init__(self, *, model: GenomicTransformer, checkpoint: Checkpoint, limits: ServiceLimits):
        if limits.max_length > model.config.max_len:
            raise ValueError(f"max_length {limits.max_length} exceeds the model's max_len {model.config.max_len}")
        self.model = model.eval()
        self.checkpoint = checkpoint
        self.limits = limits
        self.per_client = PerClientLimit(limits.max_rpcs_per_client)

    @_handler
    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        task = _check_task(self.model, request.task)
        _check_batch(len(request.sequences), self.limits, "sequence")
        _check_sequences(request.sequences, self.limits)
        probabilities = predict_sequences(self.model, sequences=list(request.sequences), task=task,
                                          batch_size=self.limits.max_batch)
        return pb.PredictResponse(task=task, class_names=get_task(task).label_names,
                                  predictions=[_prediction(task, p) for p in probabilities])

    @_handler
    def ScoreVariants(self, request: pb.ScoreVariantsRequest, context) -> pb.ScoreVariantsResponse:
        _check_batch(len(request.pairs), self.limits, "pair")
        variants = []
        for index, pair in enumerate(request.pairs):
            if pair.task:
                _check_task(self.model, pair.task)
            for field in ("ref", "alt"):
                _check_sequences_at(getattr(pair, field), index, f"pair {index} ({pair.id!r}) {field}", self.limits)
            variants.append(Variant(pair.id or f"pair-{index}", pair.ref, pair.alt, pair.task or None))
        impacts = score_variants(self.model, variants=variants, batch_size=self.limits.max_batch)
        return pb.ScoreVariantsResponse(scores=[
            pb.VariantScore(id=i.id, task=i.task, delta_probability=i.delta_probability,
                            attention_change=i.attention_change, score=i.score, impact=i.impact, label=i.label)
            for i in impacts])

    @_handler
    def Attention(self, request: pb.AttentionRequest, context) -> pb.AttentionResponse:
        _check_sequences([request.sequence], self.limits)
        maps = attention_maps(self.model, sequence=request.sequence)
        layer = request.layer if request.HasField("layer") else -1
        head = request.head if request.HasField("head") else None
        weights = maps.select(layer=layer, head=head)  # AnalysisError (a ValueError) when out of range
        return pb.AttentionResponse(
            layer=layer % maps.num_layers, head=-1 if head is None else head, tokens=maps.tokens,
            weights=weights.ravel().tolist(), received=attention_received(weights).tolist(),
            entropy=attention_entropy(weights).tolist(), sequence_entropy=sequence_entropy(request.sequence),
            num_layers=maps.num_layers, num_heads=maps.num_heads)

    @_handler
    def Evaluate(self, request: pb.EvaluateRequest, context) -> pb.EvaluateResponse:
        task = _check_task(self.model, request.task)
        _check_batch(len(request.examples), self.limits, "example")
        _check_sequences([e.sequence for e in request.examples], self.limits, item="example")
        records = [_record(task, example, index) for index, example in enumerate(request.examples)]
        dataset = GenomicDataset(records, task=task, source="request", max_len=self.limits.max_length)
        metrics = evaluate(self.model, dataset, batch_size=self.limits.max_batch, by_species=True)
        by_species = metrics.pop("species")
        return pb.EvaluateResponse(
            task=task, metrics=_metrics(metrics), num_examples=len(records),
            by_species={species: _metrics(values) for species, values in by_species.items()})

    @_handler
    def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        tasks = [pb.TaskInfo(name=spec.name, kind=spec.kind, class_names=spec.label_names,
                             headline_metric=spec.headline_metric) for spec in map(get_task, self.model.tasks)]
        config = self.model.config
        return pb.ModelInfoResponse(
            tasks=tasks, model_config_json=json.dumps(config.to_dict(), sort_keys=True),
            num_parameters=self.model.num_parameters(), round=self.checkpoint.round, num_layers=config.n_layers,
            num_heads=config.n_heads, max_batch=self.limits.max_batch, max_length=self.limits.max_length,
            high_impact_threshold=HIGH_IMPACT_THRESHOLD, checkpoint=self.checkpoint.path.name)  # a name, no path


def _check_sequences_at(sequence: str, index: int, item: str, limits: ServiceLimits) -> None:
    try:
        encode(sequence, index=index, max_len=limits.max_length)
    except SequenceError as err:
        raise InvalidRequest(str(err).replace(f"sequence {index}", item, 1)) from err


def _record(task: str, example: pb.LabelledSequence, index: int) -> Record:
    """A request example as a Record; labels are range-checked by GenomicDataset, naming the id."""
    record_id = example.id or f"example-{index}"
    if get_task(task).per_position:
        if len(example.labels) != len(example.sequence):
            raise InvalidRequest(f"example {index} ({record_id!r}): {len(example.labels)} labels for "
                                 f"{len(example.sequence)} bases; expected one label per base")
        label = np.asarray(example.labels, dtype=np.int64)
    else:
        label = int(example.label)
    return Record(record_id, example.sequence, label, example.species or None)


def _metrics(values: dict) -> pb.Metrics:
    return pb.Metrics(values={name: float(value) for name, value in values.items()})


# ---------------------------------------------------------------- the server


@dataclass
class RunningServer:
    """A started server: its bound port and the handles to stop it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service: HelixfedService

    def stop(self, grace: float) -> None:
        """Refuse new RPCs, give those in flight ``grace`` seconds, and wait until stopped."""
        self.health.enter_graceful_shutdown()  # health checks now answer NOT_SERVING
        self.server.stop(grace).wait()


def start_server(*, model: GenomicTransformer, checkpoint: Checkpoint, host: str = "127.0.0.1", port: int = 0,
                 limits: ServiceLimits | None = None, tls_dir: Path | None = None,
                 token: str | None = None, require_client_cert: bool = False) -> RunningServer:
    """Start serving ``model`` on ``host:port`` (port 0: any free port), in background threads.

    Args:
        model, checkpoint: from :func:`common.checkpoint.load_model`.
        host, port: where to listen.
        limits: :class:`ServiceLimits` (default: their defaults, max_length capped at the model's max_len).
        tls_dir: ``server.crt`` and ``server.key`` (``helixfed certs``): TLS; None: an insecure channel.
        token: callers must send ``authorization: Bearer <token>`` (the health check excepted).
        require_client_cert: mutual TLS: callers need a certificate signed by ``tls_dir/ca.crt``.

    Returns:
        :class:`RunningServer`.

    Raises:
        ValueError: limits the model cannot honour. RuntimeError: the address cannot be bound.
    """
    if require_client_cert and tls_dir is None:
        raise ValueError("--require-client-cert needs --tls-dir (mutual TLS is TLS first)")
    limits = limits or ServiceLimits(max_length=min(ServiceLimits.max_length, model.config.max_len))
    service = HelixfedService(model=model, checkpoint=checkpoint, limits=limits)
    server = grpc.server(ThreadPoolExecutor(max_workers=limits.max_workers, thread_name_prefix="helixfed-rpc"),
                         maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
                         interceptors=[TokenInterceptor(token)] if token else None)
    pb_grpc.add_HelixfedServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    credentials = (server_credentials(tls_dir, require_client_cert=require_client_cert)
                   if tls_dir is not None else None)
    bound = (server.add_secure_port(address, credentials) if credentials is not None
             else server.add_insecure_port(address))
    if bound == 0:
        raise RuntimeError(f"cannot listen on {address}")
    server.start()
    for name in ("", SERVICE_NAME):  # "" is the whole server, as health checkers ask by default
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, health_servicer, service)


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``helixfed serve``: the gRPC evaluation service of one checkpoint."""
    defaults = ServiceLimits()
    parser = subparsers.add_parser(
        "serve", help="serve a checkpoint over gRPC (predict, variants, attention, evaluate, model info)",
        description="Serve one checkpoint over gRPC until SIGTERM or SIGINT, with health checking and "
                    "server reflection. Insecure transport: listen on loopback, or put TLS in front.")
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="DIR")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free port, printed at start)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, help="sequences per request")
    parser.add_argument("--max-length", type=int, default=None,
                        help="bases per sequence (default: the model's max_len, at most 512)")
    parser.add_argument("--max-workers", type=int, default=defaults.max_workers, help="RPC threads")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=defaults.max_concurrent_rpcs,
                        help="RPCs admitted at once; more are refused with RESOURCE_EXHAUSTED")
    parser.add_argument("--max-rpcs-per-client", type=int, default=None,
                        help="requests one client address may have running at once (default: max workers - 1); "
                             "more are RESOURCE_EXHAUSTED")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds in-flight RPCs get at shutdown")
    parser.add_argument("--tls-dir", type=Path, default=None,
                        help="serve TLS with server.crt/server.key from `helixfed certs` (clients trust ca.crt)")
    parser.add_argument("--require-client-cert", action="store_true",
                        help="mutual TLS: admit only callers with a certificate the --tls-dir CA signed "
                             "(helixfed certs --clients NAME)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="require 'authorization: Bearer <token>' on every RPC but the health check")
    parser.add_argument("--allow-non-dp", action="store_true",
                        help="serve a checkpoint trained without DP (it carries no privacy guarantee)")
    parser.set_defaults(func=run_serve)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    """``helixfed serve``: runs until SIGTERM/SIGINT; 0 after a graceful stop, 1 if it cannot start."""
    try:
        model, checkpoint = load_model(args.checkpoint)
        max_length = args.max_length or min(ServiceLimits.max_length, model.config.max_len)
        limits = ServiceLimits(max_batch=args.max_batch, max_length=max_length, max_workers=args.max_workers,
                               max_concurrent_rpcs=args.max_concurrent_rpcs,
                               max_rpcs_per_client=args.max_rpcs_per_client)
        privacy = checkpoint_privacy(checkpoint)
        if privacy == "non-dp" and not args.allow_non_dp:
            raise ValueError(f"{args.checkpoint}: trained without DP; such a model must not leave the institution "
                             f"(pass --allow-non-dp to serve it anyway, knowing it carries no privacy guarantee)")
        token = read_token(args.token_file) if args.token_file else None
        running = start_server(model=model, checkpoint=checkpoint, host=args.host, port=args.port, limits=limits,
                               tls_dir=args.tls_dir, token=token, require_client_cert=args.require_client_cert)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"helixfed serve: error: {err}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.tls_dir is None and not is_loopback(args.host):
        print(f"helixfed serve: WARNING: insecure channel on {args.host}, reachable beyond this machine: anyone "
              f"on the network can read the sequences sent and the answers; use --tls-dir (and --token-file)",
              file=sys.stderr, flush=True)
    if privacy != "dp":
        print(f"helixfed serve: note: this checkpoint's privacy is {privacy!r}", file=sys.stderr, flush=True)
    print(f"helixfed serve: listening on {args.host}:{running.port} (tasks: {', '.join(model.tasks)}; "
          f"max batch {limits.max_batch}, max length {limits.max_length}; "
          f"{'TLS' if args.tls_dir else 'insecure'}{', client certificates' if args.require_client_cert else ''}"
          f"{', token' if token else ''})", flush=True)
    while not stop.wait(0.5):  # short waits keep the main thread responsive to signals
        pass
    running.stop(args.grace)
    print("helixfed serve: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m server.service.server ...``: the serve command without the dispatcher."""
    parser = argparse.ArgumentParser(prog="helixfed")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
