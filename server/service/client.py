"""``helixfed query``: ask a running ``helixfed serve`` for predictions, without gRPC tooling.

    helixfed query --server HOST:PORT --task T --sequence SEQ [--sequence SEQ ...] [--timeout S]

Prints the same TSV as ``helixfed predict`` (ids are ``seq1``, ``seq2``, ... in argument order).
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from common.analysis.files import prediction_header, prediction_rows
from common.tasks import TASKS, declare_task, get_task
from server.service import helixfed_pb2 as pb
from server.service import helixfed_pb2_grpc as pb_grpc
from server.service.security import channel_credentials, read_token

# Attention maps of long sequences run to a few MB; the gRPC default receive limit is 4 MB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),)


def connect(address: str, *, root_certificates: Path | None = None, token: str | None = None,
            client_cert: Path | None = None, client_key: Path | None = None
            ) -> tuple[grpc.Channel, pb_grpc.HelixfedStub]:
    """A channel to ``address`` (``HOST:PORT``) and a stub on it; close the channel when done.

    ``root_certificates``: the CA (``ca.crt``) to verify a TLS server with; None: insecure.
    ``token``: sent as ``authorization: Bearer <token>`` with every call.
    ``client_cert``, ``client_key``: this caller's certificate for mutual TLS (``helixfed certs --clients``).
    """
    if root_certificates is None:
        if client_cert or client_key:
            raise ValueError("--client-cert needs --root-certificates (mutual TLS is TLS first)")
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    else:
        credentials = channel_credentials(root_certificates, client_cert=client_cert, client_key=client_key)
        channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel, pb_grpc.HelixfedStub(channel)


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                          "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (every Helixfed RPC is unary)."""

    def __init__(self, token: str):
        self.metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation, details, request):
        metadata = tuple(details.metadata or ()) + self.metadata
        return continuation(_CallDetails(details.method, details.timeout, metadata, details.credentials,
                                         details.wait_for_ready, details.compression), request)


def response_probabilities(task: str, response: pb.PredictResponse) -> list[np.ndarray]:
    """The response's probabilities as :func:`common.analysis.scoring.predict_sequences` returns them:
    ``[C]`` per sequence, or ``[L, C]`` for per-position tasks."""
    if get_task(task).per_position:
        return [np.array([list(p.probabilities) for p in prediction.positions]) for prediction in response.predictions]
    return [np.array(prediction.probabilities) for prediction in response.predictions]


def query(*, address: str, task: str, sequences: Sequence[str], timeout: float = 30.0,
          root_certificates: Path | None = None, token: str | None = None, client_cert: Path | None = None,
          client_key: Path | None = None) -> list[np.ndarray]:
    """Predict ``sequences`` on the server at ``address``.

    Returns:
        Probabilities per sequence (see :func:`response_probabilities`).

    Raises:
        grpc.RpcError: the server refused the request (e.g. INVALID_ARGUMENT) or could not be reached.
    """
    channel, stub = connect(address, root_certificates=root_certificates, token=token, client_cert=client_cert,
                            client_key=client_key)
    with channel:
        if task not in TASKS:  # a task the federation declared: the served model says what it is
            learn_tasks(stub.ModelInfo(pb.ModelInfoRequest(), timeout=timeout))
        response = stub.Predict(pb.PredictRequest(task=task, sequences=list(sequences)), timeout=timeout)
    return response_probabilities(task, response)


def learn_tasks(info: pb.ModelInfoResponse) -> None:
    """Declare, in this process, the served model's tasks that are not built in."""
    for task in info.tasks:
        if task.name not in TASKS:
            declare_task(task.name, kind=task.kind, classes=tuple(task.class_names), metric=task.headline_metric)


def add_query_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``helixfed query``."""
    parser = subparsers.add_parser(
        "query", help="ask a running 'helixfed serve' for predictions (TSV out, as 'helixfed predict')",
        description="Send sequences to a helixfed gRPC server's Predict and print the probabilities.")
    parser.add_argument("--server", required=True, metavar="HOST:PORT")
    parser.add_argument("--task", metavar="TASK", required=True)
    parser.add_argument("--sequence", action="append", required=True, metavar="SEQ",
                        help="a sequence to predict (repeatable)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    parser.add_argument("--root-certificates", type=Path, default=None, metavar="CA",
                        help="the CA certificate (ca.crt) of a TLS server")
    parser.add_argument("--client-cert", type=Path, default=None, metavar="CRT",
                        help="this caller's certificate, for a server with --require-client-cert")
    parser.add_argument("--client-key", type=Path, default=None, metavar="KEY", help="its private key")
    parser.add_argument("--token-file", type=Path, default=None, help="file holding the server's bearer token")
    parser.set_defaults(func=run_query)
    return parser


def run_query(args: argparse.Namespace) -> int:
    """``helixfed query``; 0 on success, 1 when the server refuses or cannot be reached."""
    try:
        probabilities = query(address=args.server, task=args.task, sequences=args.sequence, timeout=args.timeout,
                              root_certificates=args.root_certificates,
                              token=read_token(args.token_file) if args.token_file else None,
                              client_cert=args.client_cert, client_key=args.client_key)
    except (OSError, ValueError) as err:
        print(f"helixfed query: error: {err}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"helixfed query: error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    writer.writerow(prediction_header(args.task))
    ids = [f"seq{i}" for i in range(1, len(args.sequence) + 1)]
    writer.writerows(prediction_rows(args.task, ids=ids, sequences=args.sequence, probabilities=probabilities))
    return 0
