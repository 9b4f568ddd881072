"""Certificates and keys of the local control plane, made with `cryptography`.

One CA signs the API server's serving certificate and every client certificate; the API server
trusts it as --client-ca-file, so a client certificate's CN is the user name and its O the groups.
ECDSA P-256 throughout: generating it takes microseconds where RSA takes a noticeable share of a
warm start on two busy cores, and Kubernetes accepts it everywhere (ES256 for service-account tokens).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class Identity:
    """Who a client certificate says it is: user name (CN) and groups (O)."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass(frozen=True)
class Pki:
    ca: CertPair
    serving: CertPair
    service_account_key: Path  # private: signs tokens (apiserver) and is given to the controller-manager
    service_account_pub: Path  # public: verifies tokens
    clients: dict[str, CertPair]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # A minute of slack: the processes we start read these at once, clocks are the same.
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + VALIDITY)
    )


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    directory: Path,
    stem: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None = None,
) -> CertPair:
    key = _new_key()
    builder = (
        _builder(subject, ca_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertPair(
        cert=_write(directory / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
        key=_write(directory / f"{stem}.key", _key_pem(key), private=True),
    )


def create(
    directory: Path,
    *,
    clients: dict[str, Identity],
    serving_ips: tuple[str, ...],
    serving_dns: tuple[str, ...],
) -> Pki:
    """Write a CA, the API server's serving pair, service-account keys and one client pair per entry."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_name = _name("sentiment-rollouts-local-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertPair(
        cert=_write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM)),
        key=_write(directory / "ca.key", _key_pem(ca_key), private=True),
    )
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(ip)) for ip in serving_ips]
        + [x509.DNSName(name) for name in serving_dns]
    )
    serving = _issue(
        directory, "apiserver", ca_key, ca_name, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, san
    )
    sa_key = _new_key()
    sa_private = _write(directory / "service-account.key", _key_pem(sa_key), private=True)
    sa_public = _write(
        directory / "service-account.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    client_pairs = {
        stem: _issue(
            directory,
            f"client-{stem}",
            ca_key,
            ca_name,
            _name(identity.name, identity.groups),
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        for stem, identity in clients.items()
    }
    return Pki(
        ca=ca,
        serving=serving,
        service_account_key=sa_private,
        service_account_pub=sa_public,
        clients=client_pairs,
    )
