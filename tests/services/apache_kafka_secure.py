"""An Apache Kafka broker with secured listeners, and the certificates it needs, made by the test.

:meth:`SecuredKafka.start` starts one :class:`~tests.services.apache_kafka.ApacheKafkaService`
(so stopping, the watchdog and the admin/produce helpers are the same) with three listeners:

* ``PLAINTEXT`` (``service.bootstrap``): inter-broker traffic and the test's own admin/produce
  helpers, so a test sets up and checks its data without the security under test;
* ``SECURED`` (``sasl_ssl``): SASL_SSL with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512. The SCRAM
  users are written into the metadata log by ``StorageTool format --add-scram`` (KRaft keeps
  SCRAM credentials there), the PLAIN users in the listener's JAAS line;
* ``MTLS`` (``mtls``): SSL with ``ssl.client.auth=required`` (a client certificate signed by the
  test CA).

Certificates (EC P-256, made with ``cryptography``): a test CA; the broker's certificate for
``127.0.0.1``/``localhost`` signed by it (so hostname checks pass); a client certificate signed
by it; and a second, unrelated CA (:attr:`Certificates.other_ca`) that a client can wrongly
trust to see an untrusted-certificate failure. Kafka reads them as PEM key/trust stores
(``ssl.keystore.type=PEM``), so no ``keytool`` is needed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .apache_kafka import ApacheKafkaService
from .ports import free_port

USERS = {"alice": "alice-secret-4f1c", "bob": "bob-secret-9a2e"}
"""SASL users (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN) and their passwords."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    hosts: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signer = (
        (_name(subject), key) if issuer is None else (issuer[0].subject, issuer[1])
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Certificates:
    """PEM files in ``directory``: CA, broker key store, client cert/key, an unrelated CA."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def other_ca(self) -> Path:
        return self.directory / "other-ca.pem"

    @property
    def broker_keystore(self) -> Path:
        return self.directory / "broker-keystore.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client-key.pem"

    @classmethod
    def make(cls, directory: Path) -> Certificates:
        """Generate every file (≈ 10 ms: EC keys)."""
        ca_key = _key()
        ca = _certificate("lambdasource test CA", ca_key, None, ca=True)
        other_key = _key()
        other = _certificate("some other CA", other_key, None, ca=True)
        broker_key, client_key = _key(), _key()
        broker = _certificate("127.0.0.1", broker_key, (ca, ca_key), hosts=True)
        client = _certificate("lambdasource test client", client_key, (ca, ca_key))
        made = cls(directory)
        made.ca.write_bytes(_pem(ca))
        made.other_ca.write_bytes(_pem(other))
        # Kafka's PEM key store: the PKCS#8 key, then the certificate chain
        made.broker_keystore.write_bytes(_pkcs8(broker_key) + _pem(broker) + _pem(ca))
        made.client_cert.write_bytes(_pem(client))
        made.client_key.write_bytes(_pkcs8(client_key))
        return made


def _jaas_plain() -> str:
    users = " ".join(f'user_{name}="{password}"' for name, password in USERS.items())
    return f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"


@dataclass
class SecuredKafka:
    """A running broker with ``SECURED`` (SASL_SSL) and ``MTLS`` (SSL) listeners; see module."""

    service: ApacheKafkaService
    certificates: Certificates
    sasl_ssl_port: int
    mtls_port: int

    @property
    def sasl_ssl(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def mtls(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    @classmethod
    def start(cls) -> SecuredKafka:
        directory = Path(tempfile.mkdtemp(prefix="ls-kafka-certs-"))
        try:
            certs = Certificates.make(directory)
            secured, mtls = free_port(), free_port()
            while mtls == secured:
                mtls = free_port()
            scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            overrides = {
                "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
                "listener.name.secured.plain.sasl.jaas.config": _jaas_plain(),
                "listener.name.secured.scram-sha-256.sasl.jaas.config": scram,
                "listener.name.secured.scram-sha-512.sasl.jaas.config": scram,
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(certs.broker_keystore),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(certs.ca),
                "listener.name.mtls.ssl.client.auth": "required",
            }
            format_args: list[str] = []
            for name, password in USERS.items():
                for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                    format_args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
            service = ApacheKafkaService.start(
                overrides=overrides,
                listeners={"SECURED": ("SASL_SSL", secured), "MTLS": ("SSL", mtls)},
                format_args=format_args,
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(service, certs, secured, mtls)

    def stop(self) -> None:
        self.service.stop()
        shutil.rmtree(self.certificates.directory, ignore_errors=True)
