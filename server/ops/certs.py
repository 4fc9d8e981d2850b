"""``helixfed certs``: the TLS certificates and SuperNode keys a deployed federation needs.

Writes, under ``--out DIR``::

    ca.crt, ca.key                       a CA that exists only for this federation
    server.crt, server.key               the SuperLink's certificate, signed by the CA
    institutions/<name>, <name>.pub      one ECDSA P-384 key pair per institution
    clients/<name>.crt, <name>.key       ``--clients``: client certificates for the evaluation
                                         service's mutual TLS (``helixfed serve --require-client-cert``)

The institution keys are in the formats Flower 1.42 loads: the private key in OpenSSH PEM
(``flower-supernode --auth-supernode-private-key`` reads it with ``load_ssh_private_key``), the
public key as an OpenSSH line (``flwr supernode register`` reads it with ``load_ssh_public_key``),
exactly what ``ssh-keygen -t ecdsa -b 384 -N ""`` writes. Private keys are written atomically
with mode 0600, and nothing is overwritten without ``--force``: a silently replaced CA or
institution key would lock every enrolled institution out.

``--keys-only`` writes institution key pairs alone, so an institution can create its own on its
own machine and send only the public key to the coordinating site. ``--clients`` without
``--server-name`` signs client certificates with the CA already in ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.atomic import atomic_write_bytes
from common.config import INSTITUTION_NAME_PATTERN

CURVE = ec.SECP384R1()  # NIST P-384: Flower accepts NIST curves only for SuperNode keys
INSTITUTIONS_DIR = "institutions"
CLIENTS_DIR = "clients"
CA_FILES = ("ca.crt", "ca.key")
SERVER_FILES = ("server.crt", "server.key")
# The same rule as an institution's name in every config file (common/config.py).
INSTITUTION_NAME = re.compile(INSTITUTION_NAME_PATTERN)
DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MAX_DAYS = 3650
# Certificates start a little in the past: a machine whose clock is a few minutes behind the
# coordinator's would otherwise reject a freshly issued certificate as not yet valid.
CLOCK_SKEW = dt.timedelta(minutes=5)
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


class CertsError(ValueError):
    """Bad arguments or an output that would overwrite existing keys."""


@dataclass(frozen=True)
class ServerIdentity:
    """Who the server certificate vouches for: its common name and every subject alternative name."""

    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]


# -- argument checks -----------------------------------------------------------------------------


def parse_institutions(value: str, flag: str = "--institutions") -> tuple[str, ...]:
    """``"a,b,c"`` as names (checked by :func:`check_institution_names`)."""
    names = tuple(part.strip() for part in value.split(",")) if value.strip() else ()
    return check_institution_names(names, flag)


def check_institution_names(names: Sequence[str], flag: str = "--institutions") -> tuple[str, ...]:
    """Empty names, duplicates and names the federation config would reject are errors (a name is
    also a file name under ``institutions/``, so this keeps paths inside the output directory)."""
    names = tuple(names)
    for name in names:
        if not INSTITUTION_NAME.fullmatch(name):
            raise CertsError(f"{flag}: {name!r} is not a valid name "
                             f"(lower-case letters, digits, '-' and '_', starting with a letter or digit)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CertsError(f"{flag}: duplicate names {duplicates}")
    return names


def _check_dns_name(name: str, flag: str) -> str:
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
        raise CertsError(f"{flag}: {name!r} is not a valid DNS name")
    return name.rstrip(".").lower()


def _ip(value: str, flag: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError as err:
        raise CertsError(f"{flag}: {value!r} is not an IP address") from err


def server_identity(server_name: str, *, ips: Sequence[str] = (), dns_names: Sequence[str] = ()
                    ) -> ServerIdentity:
    """The names institutions may dial: ``server_name`` (a DNS name or an IP address), localhost
    and 127.0.0.1 (the SuperLink's own processes and ``flwr`` connect over loopback), and any extras.

    Raises:
        CertsError: a name that is not a DNS name or an IP address.
    """
    dns: list[str] = []
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        addresses.append(ipaddress.ip_address(server_name))
    except ValueError:
        dns.append(_check_dns_name(server_name, "--server-name"))
    dns += ["localhost", *(_check_dns_name(name, "--dns") for name in dns_names)]
    addresses += [ipaddress.ip_address("127.0.0.1"), *(_ip(value, "--ip") for value in ips)]
    return ServerIdentity(common_name=server_name, dns_names=tuple(dict.fromkeys(dns)),
                          ip_addresses=tuple(dict.fromkeys(addresses)))


def _check_days(days: int) -> int:
    if not 1 <= days <= MAX_DAYS:
        raise CertsError(f"--days: expected 1 to {MAX_DAYS}, got {days}")
    return days


# -- certificates ----------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "helixfed"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))


def make_ca(*, common_name: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(CURVE)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return _validity(builder, days).sign(key, hashes.SHA384()), key


def _leaf_certificate(common_name: str, usage: x509.ObjectIdentifier, *, ca_cert: x509.Certificate,
                      ca_key: ec.EllipticCurvePrivateKey, days: int, names: list[x509.GeneralName] | None = None
                      ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for one extended key usage, signed by the CA. The extensions are the ones strict
    verifiers (Python 3.13's default context, cryptography's verifier) insist on."""
    key = ec.generate_private_key(CURVE)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    builder = (builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                              critical=False))
    return _validity(builder, days).sign(ca_key, hashes.SHA384()), key


def make_server_certificate(identity: ServerIdentity, *, ca_cert: x509.Certificate,
                            ca_key: ec.EllipticCurvePrivateKey, days: int
                            ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for ``identity`` (every DNS name and IP address), signed by the CA."""
    names = [*(x509.DNSName(n) for n in identity.dns_names), *(x509.IPAddress(a) for a in identity.ip_addresses)]
    return _leaf_certificate(identity.common_name, ExtendedKeyUsageOID.SERVER_AUTH, ca_cert=ca_cert,
                             ca_key=ca_key, days=days, names=names)


def make_client_certificate(name: str, *, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                            days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS client certificate (client-auth only) for ``name``, signed by the CA."""
    return _leaf_certificate(name, ExtendedKeyUsageOID.CLIENT_AUTH, ca_cert=ca_cert, ca_key=ca_key, days=days)


def _pem_certificate(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def institution_key_pair(name: str) -> tuple[bytes, bytes]:
    """(OpenSSH private key, ``ecdsa-sha2-nistp384 AAAA... <name>@helixfed`` public key line)."""
    key = ec.generate_private_key(CURVE)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {name}@helixfed\n".encode()


# -- files -----------------------------------------------------------------------------------------


def _refuse_existing(paths: Sequence[Path], *, force: bool) -> None:
    """Checked before anything is written, so a refused call leaves the directory as it was."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise CertsError(f"refusing to overwrite {', '.join(existing)}: institutions enrolled with these "
                         f"keys would be locked out. Use --force to replace them, or another --out")


def institution_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    private = out_dir / INSTITUTIONS_DIR / name
    return private, private.with_name(f"{name}.pub")


def client_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    return out_dir / CLIENTS_DIR / f"{name}.crt", out_dir / CLIENTS_DIR / f"{name}.key"


def _planned_paths(out_dir: Path, institutions: Sequence[str], *, keys_only: bool,
                   clients: Sequence[str] = ()) -> list[Path]:
    paths = [] if keys_only else [out_dir / name for name in (*CA_FILES, *SERVER_FILES)]
    for name in institutions:
        paths += institution_paths(out_dir, name)
    for name in clients:
        paths += client_paths(out_dir, name)
    return paths


def _write_client_certificates(out_dir: Path, clients: Sequence[str], days: int) -> None:
    try:
        ca_cert = x509.load_pem_x509_certificate((out_dir / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((out_dir / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as err:
        raise CertsError(f"--clients: no CA in {out_dir} ({Path(err.filename).name} missing); create one with "
                         f"--server-name first") from err
    except ValueError as err:
        raise CertsError(f"--clients: the CA in {out_dir} cannot be read: {err}") from err
    for name in clients:
        cert, key = make_client_certificate(name, ca_cert=ca_cert, ca_key=ca_key, days=days)
        cert_path, key_path = client_paths(out_dir, name)
        atomic_write_bytes(key_path, _pem_private_key(key), mode=PRIVATE_MODE)
        atomic_write_bytes(cert_path, _pem_certificate(cert), mode=PUBLIC_MODE)


def _write_institution_keys(out_dir: Path, institutions: Sequence[str]) -> None:
    for name in institutions:
        private_path, public_path = institution_paths(out_dir, name)
        private, public = institution_key_pair(name)
        atomic_write_bytes(private_path, private, mode=PRIVATE_MODE)
        atomic_write_bytes(public_path, public, mode=PUBLIC_MODE)


def _write_ca_and_server(out_dir: Path, identity: ServerIdentity, days: int) -> None:
    ca_cert, ca_key = make_ca(common_name=f"helixfed federation CA ({identity.common_name})", days=days)
    server_cert, server_key = make_server_certificate(identity, ca_cert=ca_cert, ca_key=ca_key, days=days)
    atomic_write_bytes(out_dir / "ca.key", _pem_private_key(ca_key), mode=PRIVATE_MODE)
    atomic_write_bytes(out_dir / "ca.crt", _pem_certificate(ca_cert), mode=PUBLIC_MODE)
    atomic_write_bytes(out_dir / "server.key", _pem_private_key(server_key), mode=PRIVATE_MODE)
    # The CA signs the server certificate directly, so the chain a client needs is the leaf alone.
    atomic_write_bytes(out_dir / "server.crt", _pem_certificate(server_cert), mode=PUBLIC_MODE)


def write_federation_certs(*, out_dir: Path, server_name: str, institutions: Sequence[str] = (),
                           ips: Sequence[str] = (), dns_names: Sequence[str] = (), days: int = 825,
                           force: bool = False, clients: Sequence[str] = ()) -> list[Path]:
    """Write the CA, the server certificate and key, and each institution's key pair.

    Args:
        out_dir: directory to write into (created if missing).
        server_name: the DNS name or IP address institutions use to reach the server.
        institutions: names to create key pairs for.
        ips: extra IP addresses for the server certificate.
        dns_names: extra DNS names for the server certificate.
        days: validity of both certificates.
        force: replace existing files instead of refusing.
        clients: names to create evaluation-service client certificates for.

    Returns:
        The paths written.

    Raises:
        CertsError: a bad name, address or validity, or files that exist (without ``force``).
    """
    identity = server_identity(server_name, ips=ips, dns_names=dns_names)
    _check_days(days)
    institutions = check_institution_names(institutions)
    clients = check_institution_names(clients, "--clients")
    paths = _planned_paths(out_dir, institutions, keys_only=False, clients=clients)
    _refuse_existing(paths, force=force)
    _write_ca_and_server(out_dir, identity, days)
    _write_institution_keys(out_dir, institutions)
    _write_client_certificates(out_dir, clients, days)
    return paths


def write_client_certificates(*, out_dir: Path, clients: Sequence[str], days: int = 825,
                              force: bool = False) -> list[Path]:
    """Client certificates signed by the CA already in ``out_dir`` (``clients/<name>.crt``, ``.key``).

    Raises:
        CertsError: a bad name or validity, no CA there, or files that exist (without ``force``).
    """
    _check_days(days)
    clients = check_institution_names(clients, "--clients")
    paths = _planned_paths(out_dir, (), keys_only=True, clients=clients)
    _refuse_existing(paths, force=force)
    _write_client_certificates(out_dir, clients, days)
    return paths


def write_institution_keys(*, out_dir: Path, institutions: Sequence[str], force: bool = False) -> list[Path]:
    """Write only institution key pairs, under ``out_dir/institutions/``.

    Raises:
        CertsError: no institution named, or files that exist (without ``force``).
    """
    institutions = check_institution_names(institutions)
    if not institutions:
        raise CertsError("--keys-only: name the institutions to create keys for with --institutions")
    paths = _planned_paths(out_dir, institutions, keys_only=True)
    _refuse_existing(paths, force=force)
    _write_institution_keys(out_dir, institutions)
    return paths


# -- command ---------------------------------------------------------------------------------------


def add_certs_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "certs", help="create the CA, the server certificate and the institutions' keys",
        description="Create a federation's TLS certificates and SuperNode authentication keys.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write into")
    parser.add_argument("--server-name", metavar="NAME",
                        help="DNS name or IP address institutions dial to reach the server (required unless --keys-only)")
    parser.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                        help="another IP address for the server certificate (repeatable)")
    parser.add_argument("--dns", action="append", default=[], metavar="NAME",
                        help="another DNS name for the server certificate (repeatable)")
    parser.add_argument("--institutions", default="", metavar="A,B,C",
                        help="comma-separated institution names to create key pairs for (institutions may "
                             "instead create their own with --keys-only and send only the public key)")
    parser.add_argument("--clients", default="", metavar="A,B",
                        help="comma-separated names to issue evaluation-service client certificates for "
                             "(mutual TLS; without --server-name the CA already in --out signs them)")
    parser.add_argument("--days", type=int, default=825, help="certificate validity in days (default 825)")
    parser.add_argument("--keys-only", action="store_true",
                        help="write only institution key pairs (an institution creating its own)")
    parser.add_argument("--force", action="store_true", help="replace existing certificates and keys")
    parser.set_defaults(func=run_certs_command)


def _written(paths: Sequence[Path], out_dir: Path) -> None:
    print(f"wrote under {out_dir}:")
    for path in paths:
        print(f"  {path.relative_to(out_dir)}")
    if any(p.name == "ca.key" for p in paths):
        print("server: ca.crt, server.crt, server.key (helixfed server --tls-dir); keep ca.key offline")
    if any(p.parent.name == INSTITUTIONS_DIR for p in paths):
        print("institution <name>: ca.crt and institutions/<name> (helixfed client --root-certificates, --key); "
              "enroll institutions/<name>.pub in the federation config")
    if any(p.parent.name == CLIENTS_DIR for p in paths):
        print("service caller <name>: ca.crt, clients/<name>.crt and .key (helixfed query --root-certificates, "
              "--client-cert, --client-key; the server runs helixfed serve --require-client-cert)")


def run_certs_command(args: argparse.Namespace) -> int:
    out_dir = args.out.resolve()
    try:
        institutions = parse_institutions(args.institutions)
        clients = parse_institutions(args.clients, "--clients")
        if args.keys_only and (args.server_name or args.ip or args.dns or clients):
            raise CertsError("--keys-only writes no certificate: drop --server-name, --ip, --dns and --clients")
        if args.keys_only:
            paths = write_institution_keys(out_dir=out_dir, institutions=institutions, force=args.force)
        elif clients and not args.server_name:
            if institutions:
                raise CertsError("--institutions with --clients alone: write institution keys with --keys-only")
            paths = write_client_certificates(out_dir=out_dir, clients=clients, days=args.days, force=args.force)
        elif not args.server_name:
            raise CertsError("--server-name is required (the name institutions dial), unless --keys-only "
                             "or --clients")
        else:
            paths = write_federation_certs(out_dir=out_dir, server_name=args.server_name,
                                           institutions=institutions, ips=args.ip, dns_names=args.dns,
                                           days=args.days, force=args.force, clients=clients)
    except CertsError as err:
        print(f"helixfed certs: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"helixfed certs: error: cannot write under {out_dir}: {err.strerror or err} "
              f"({err.filename or out_dir})", file=sys.stderr)
        return 1
    _written(paths, out_dir)
    return 0
