"""``helixfed certs``: certificates that verify, keys Flower loads, TLS that works on loopback."""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import ipaddress
import shutil
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from server.ops.certs import add_certs_parser

INSTITUTIONS = ("oslo-uh", "jackson-lab")


def run_certs(*argv: str) -> int:
    """The command as `helixfed certs` runs it, without depending on the installed entry points."""
    parser = argparse.ArgumentParser(prog="helixfed")
    add_certs_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["certs", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    code = run_certs("--out", str(out), "--server-name", "server", "--ip", "10.20.30.40",
                     "--dns", "fl.example.org", "--institutions", ",".join(INSTITUTIONS))
    assert code == 0
    return out


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def verifier_for(ca: x509.Certificate, name: DNSName | IPAddress):
    return PolicyBuilder().store(Store([ca])).time(dt.datetime.now(dt.UTC)).build_server_verifier(name)


# -- certificates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [DNSName("server"), DNSName("localhost"), DNSName("fl.example.org"),
                                  IPAddress(ipaddress.ip_address("127.0.0.1")),
                                  IPAddress(ipaddress.ip_address("10.20.30.40"))])
def test_server_certificate_verifies_for_every_name_it_carries(certs, name):
    ca, leaf = load_certificate(certs / "ca.crt"), load_certificate(certs / "server.crt")

    chain = verifier_for(ca, name).verify(leaf, [])

    assert chain[-1] == ca


def test_server_certificate_carries_exactly_the_requested_names(certs):
    leaf = load_certificate(certs / "server.crt")

    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert names.get_values_for_type(DNSName) == ["server", "localhost", "fl.example.org"]
    assert names.get_values_for_type(IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                    ipaddress.ip_address("10.20.30.40")]


def test_server_certificate_does_not_verify_for_another_name_or_ca(certs, tmp_path):
    ca, leaf = load_certificate(certs / "ca.crt"), load_certificate(certs / "server.crt")
    assert run_certs("--out", str(tmp_path), "--server-name", "server") == 0
    other_ca = load_certificate(tmp_path / "ca.crt")

    with pytest.raises(VerificationError):
        verifier_for(ca, DNSName("elsewhere.example.org")).verify(leaf, [])
    with pytest.raises(VerificationError):
        verifier_for(other_ca, DNSName("server")).verify(leaf, [])


def test_server_key_matches_its_certificate(certs):
    key = load_pem_private_key((certs / "server.key").read_bytes(), password=None)

    assert key.public_key() == load_certificate(certs / "server.crt").public_key()


def test_private_keys_are_readable_by_their_owner_only(certs):
    private = [certs / "ca.key", certs / "server.key", *(certs / "institutions" / n for n in INSTITUTIONS)]

    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in private}

    assert modes == dict.fromkeys(modes, 0o600)
    assert not list(certs.rglob("*.tmp")), "a temporary file was left behind"


# -- institution keys: the formats Flower loads ---------------------------------------------------------


@pytest.mark.parametrize("name", INSTITUTIONS)
def test_institution_private_key_loads_like_flower_supernode_loads_it(certs, name):
    # flower-supernode --auth-supernode-private-key: load_ssh_private_key(bytes, None), EC required.
    from flwr.supernode.cli.flower_supernode import load_ssh_private_key

    text = (certs / "institutions" / name).read_bytes()
    key = load_ssh_private_key(text, None)

    assert text.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"


@pytest.mark.parametrize("name", INSTITUTIONS)
def test_institution_public_key_is_what_flwr_supernode_register_accepts(certs, name):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    public_path = certs / "institutions" / f"{name}.pub"
    private = load_ssh_private_key((certs / "institutions" / name).read_bytes(), None)

    registered = try_load_public_key(public_path)  # exits the process on a key it rejects

    assert public_path.read_text().startswith("ecdsa-sha2-nistp384 AAAA")
    assert public_path.read_text().rstrip("\n").endswith(f" {name}@helixfed")
    assert registered == public_key_to_bytes(private.public_key())


def test_institution_key_signs_what_the_superlink_verifies(certs):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
    from flwr.supercore.primitives.asymmetric import sign_message, verify_signature

    private = load_ssh_private_key((certs / "institutions" / "oslo-uh").read_bytes(), None)
    public = load_ssh_public_key((certs / "institutions" / "oslo-uh.pub").read_bytes())

    signature = sign_message(private, b"activate-node")

    assert verify_signature(public, b"activate-node", signature)
    assert not verify_signature(public, b"something else", signature)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="OpenSSH's ssh-keygen is not installed")
def test_ssh_keygen_reads_the_private_key_and_derives_the_same_public_key(certs):
    private = certs / "institutions" / "oslo-uh"

    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True)

    assert derived.stdout.split()[:2] == (certs / "institutions" / "oslo-uh.pub").read_text().split()[:2]


# -- overwriting, keys-only and bad arguments -----------------------------------------------------------


def test_existing_keys_are_never_overwritten_without_force(certs, capsys):
    before = {p: p.read_bytes() for p in certs.rglob("*") if p.is_file()}

    code = run_certs("--out", str(certs), "--server-name", "server", "--institutions", "oslo-uh,new-lab")

    assert code == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in certs.rglob("*") if p.is_file()} == before
    assert not (certs / "institutions" / "new-lab").exists(), "a refused call wrote some files"


def test_force_replaces_every_key(tmp_path):
    assert run_certs("--out", str(tmp_path), "--server-name", "server", "--institutions", "lab") == 0
    old = {name: (tmp_path / name).read_bytes() for name in ("ca.key", "server.key", "institutions/lab")}

    assert run_certs("--out", str(tmp_path), "--server-name", "server", "--institutions", "lab", "--force") == 0

    assert all((tmp_path / name).read_bytes() != data for name, data in old.items())
    assert stat.S_IMODE((tmp_path / "institutions" / "lab").stat().st_mode) == 0o600


def test_keys_only_writes_just_the_institution_key_pair(tmp_path):
    code = run_certs("--out", str(tmp_path), "--keys-only", "--institutions", "mylab")

    assert code == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "institutions/mylab", "institutions/mylab.pub"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--server-name", "server", "--institutions", "Oslo UH"], "--institutions: 'Oslo UH' is not a valid name"),
    (["--server-name", "server", "--institutions", "a,b,a"], "duplicate names ['a']"),
    (["--server-name", "server", "--institutions", "a,,b"], "'' is not a valid name"),
    (["--server-name", "bad_name!"], "--server-name: 'bad_name!' is not a valid DNS name"),
    (["--server-name", "server", "--ip", "10.0.0.300"], "--ip: '10.0.0.300' is not an IP address"),
    (["--server-name", "server", "--dns", "fl..example.org"], "--dns: 'fl..example.org' is not a valid DNS name"),
    (["--server-name", "server", "--days", "0"], "--days: expected 1 to 3650, got 0"),
    (["--institutions", "a"], "--server-name is required"),
    (["--keys-only"], "name the institutions"),
    (["--keys-only", "--institutions", "a", "--server-name", "server"], "--keys-only writes no certificate"),
    (["--clients", "alice"], "--clients: no CA in"),
    (["--server-name", "server", "--clients", "Alice B"], "--clients: 'Alice B' is not a valid name"),
    (["--keys-only", "--institutions", "a", "--clients", "alice"], "--keys-only writes no certificate"),
])
def test_bad_arguments_are_clear_errors_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "certs"

    code = run_certs("--out", str(out), *argv)

    assert code == 1
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*"))


def test_an_ip_address_as_server_name_becomes_an_ip_alternative_name(tmp_path):
    assert run_certs("--out", str(tmp_path), "--server-name", "192.0.2.7") == 0
    ca, leaf = load_certificate(tmp_path / "ca.crt"), load_certificate(tmp_path / "server.crt")

    verifier_for(ca, IPAddress(ipaddress.ip_address("192.0.2.7"))).verify(leaf, [])


# -- a real TLS handshake on loopback ---------------------------------------------------------------


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def https_server(certs):
    """An HTTPS server holding server.crt/server.key the way the SuperLink's uvicorn loads them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def client_context(ca: Path) -> ssl.SSLContext:
    """What Flower's HTTP client builds from --root-certificates, plus the strict X.509 checks
    Python 3.13 turns on by default (certificates must stay valid there too)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca.read_text())
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_handshake_on_loopback_trusting_only_the_ca(certs, https_server, host):
    with httpx.Client(verify=client_context(certs / "ca.crt"), timeout=10) as client:
        response = client.get(f"https://{host}:{https_server}/")

    assert (response.url.scheme, response.text) == ("https", "hello")


def test_tls_handshake_fails_for_a_client_trusting_another_ca(https_server, tmp_path):
    assert run_certs("--out", str(tmp_path), "--server-name", "server") == 0

    with httpx.Client(verify=client_context(tmp_path / "ca.crt"), timeout=10) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(f"https://localhost:{https_server}/")


def test_grpc_tls_with_flowers_server_factory(certs):
    """The SuperLink's gRPC servers are made by this factory from (CA, certificate, key); it also
    runs Flower's own certificate checks (valid_certificates)."""
    import grpc
    from flwr.supercore.grpc import generic_create_grpc_server
    from flwr.supercore.grpc_health.simple_health_servicer import SimpleHealthServicer
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    files = tuple((certs / name).read_bytes() for name in ("ca.crt", "server.crt", "server.key"))
    server = generic_create_grpc_server((SimpleHealthServicer(), health_pb2_grpc.add_HealthServicer_to_server),
                                        "127.0.0.1:0", max_concurrent_workers=2, certificates=files)
    port = int(server.bound_address.rpartition(":")[2])  # the factory records the port it bound
    server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=files[0])
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        server.stop(grace=None)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
