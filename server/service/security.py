"""Who may talk to the evaluation service, and which models it may serve.

* Transport: TLS with the server certificate ``helixfed certs`` writes (``server.crt``/``server.key``
  under ``--tls-dir``); clients verify it against ``ca.crt``. Without ``--tls-dir`` the channel is
  insecure, fine on loopback; anywhere else ``helixfed serve`` warns loudly.
* Callers: with ``--require-client-cert`` (mutual TLS) only callers presenting a certificate the
  federation's CA signed (``helixfed certs --clients NAME``) complete the handshake; with
  ``--token-file`` every RPC but the health check must carry ``authorization: Bearer
  <token>`` (compared in constant time); a missing or wrong token is UNAUTHENTICATED.
* Models: a checkpoint trained without DP (``helixfed train --no-dp``, or a federation in which an
  institution trained without DP) must not leave the institution: it is refused unless the operator
  says ``--allow-non-dp``. Pre-trained checkpoints saw public sequence only and may be served.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_credentials(tls_dir: Path, *, require_client_cert: bool = False) -> grpc.ServerCredentials:
    """TLS from ``tls_dir``; with ``require_client_cert``, callers must present a certificate signed by
    ``tls_dir/ca.crt`` (the federation's CA)."""
    key, cert = (tls_dir / "server.key").read_bytes(), (tls_dir / "server.crt").read_bytes()
    if not require_client_cert:
        return grpc.ssl_server_credentials([(key, cert)])
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=(tls_dir / "ca.crt").read_bytes(),
                                       require_client_auth=True)


def channel_credentials(root_certificates: Path, *, client_cert: Path | None = None,
                        client_key: Path | None = None) -> grpc.ChannelCredentials:
    if (client_cert is None) != (client_key is None):
        raise ValueError("give both --client-cert and --client-key, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates.read_bytes(),
        private_key=client_key.read_bytes() if client_key else None,
        certificate_chain=client_cert.read_bytes() if client_cert else None)


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path}: a token of at least 16 characters is expected (got {len(token)})")
    return token


class TokenInterceptor(grpc.ServerInterceptor):
    """Admit an RPC only with ``authorization: Bearer <token>``; the health check stays open."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _denied_like(handler)


def _deny(request, context: grpc.ServicerContext):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (authorization: Bearer <token>)")


def _denied_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return make[(handler.request_streaming, handler.response_streaming)](
        _deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
