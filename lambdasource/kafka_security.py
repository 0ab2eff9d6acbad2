"""``ls.KafkaSecurity``: how to reach a secured Kafka cluster (TLS, SASL PLAIN / SCRAM).

One object configures every Kafka client of the library — :class:`~lambdasource.KafkaStream`,
:class:`~lambdasource.KafkaUpsert`, the archiver, the CLI (``--security-protocol`` …) and job
files (a ``security`` table in ``[stream]`` / ``[sink]``); :meth:`KafkaSecurity.client_options`
turns it into aiokafka's keyword arguments.

Secrets: the SASL password (and a client key's password) come from an environment variable
(``password_env``) or a file (``password_file``), read each time a client is made. The object
holds only *where* the password is, so its repr, the job file and every message can show the
object without a secret; no message of this module contains a password.

Validation (ConfigError, at construction): the protocol and mechanism are known; SASL has a
mechanism, a user and exactly one password source; TLS files exist and are only given for a TLS
protocol; a named environment variable is set. :func:`structure_problems` is the part without
I/O, which the job-file schema runs on ``--check``.

Failures to connect: :func:`diagnose_connect_failure` tells, per broker, why — refused, no answer,
the broker's certificate not trusted, the TLS handshake failing, SASL authentication failing
(with the broker's own message), the broker closing the connection — in one line, within a
bounded time (a TCP probe, then one real handshake with these settings). aiokafka itself only
says ``Unable to bootstrap from [...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
HANDSHAKE_TIMEOUT = 5.0  # seconds per broker (at most) for the handshake explaining a failure
_FILES = ("ca_file", "cert_file", "key_file", "password_file")


def _is_tls(protocol: str) -> bool:
    return protocol in ("SSL", "SASL_SSL")


def _is_sasl(protocol: str) -> bool:
    return protocol.startswith("SASL_")


def structure_problems(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, message)`` for each rule ``options`` (KafkaSecurity's fields) break; no I/O."""
    protocol = options.get("security_protocol")
    if protocol not in SECURITY_PROTOCOLS:
        return [("security_protocol", f"expected one of {', '.join(SECURITY_PROTOCOLS)}")]
    problems: list[tuple[str, str]] = []
    given = {k for k, v in options.items() if v is not None}
    if _is_sasl(protocol):
        mechanism = options.get("sasl_mechanism")
        if mechanism is None:
            problems.append(
                ("sasl_mechanism", f"is required for {protocol}: {', '.join(SASL_MECHANISMS)}")
            )
        elif mechanism not in SASL_MECHANISMS:
            problems.append(("sasl_mechanism", f"expected one of {', '.join(SASL_MECHANISMS)}"))
        if not options.get("username"):
            problems.append(("username", f"is required for {protocol}"))
        sources = [k for k in ("password_env", "password_file") if k in given]
        if not sources:
            problems.append(
                ("password_env", f"{protocol} needs password_env (a variable) or password_file")
            )
        elif len(sources) == 2:
            problems.append(("password_file", "give password_env or password_file, not both"))
    else:
        for key in ("sasl_mechanism", "username", "password_env", "password_file"):
            if key in given:
                problems.append((key, f"applies to SASL_SSL or SASL_PLAINTEXT, not {protocol}"))
    if not _is_tls(protocol):
        for key in ("ca_file", "cert_file", "key_file", "key_password_env"):
            if key in given:
                problems.append((key, f"applies to SSL or SASL_SSL, not {protocol}"))
        if options.get("check_hostname") is False:
            problems.append(("check_hostname", f"applies to SSL or SASL_SSL, not {protocol}"))
    else:
        if "key_file" in given and "cert_file" not in given:
            problems.append(("key_file", "needs cert_file (the client certificate)"))
        if "key_password_env" in given and "cert_file" not in given:
            problems.append(("key_password_env", "needs cert_file (the client certificate)"))
    return problems


@dataclass(frozen=True, kw_only=True)
class KafkaSecurity:
    """TLS and SASL settings of a Kafka client (see the module docstring).

    ``security_protocol``: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
    ``sasl_mechanism``: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``; ``username`` and the
    password's source, ``password_env`` (a variable's name) or ``password_file`` (its first
    line). TLS: ``ca_file`` (PEM CAs to trust; default: the system's), ``cert_file`` /
    ``key_file`` (a PEM client certificate and key, for brokers that require one;
    ``key_password_env`` if the key is encrypted), ``check_hostname`` (default on).
    """

    security_protocol: str
    sasl_mechanism: str | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: str | Path | None = None
    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    key_password_env: str | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.security_protocol, str):
            object.__setattr__(self, "security_protocol", self.security_protocol.upper())
        if isinstance(self.sasl_mechanism, str):
            object.__setattr__(self, "sasl_mechanism", self.sasl_mechanism.upper())
        problems = structure_problems(self._fields())
        for key in _FILES:
            path = getattr(self, key)
            if path is not None and not Path(path).is_file():
                problems.append((key, f"no such file: {path}"))
        for key in ("password_env", "key_password_env"):
            name = getattr(self, key)
            if name is not None and not os.environ.get(name):
                problems.append((key, f"the environment variable {name} is not set (or empty)"))
        if problems:
            raise ConfigError(
                "KafkaSecurity: " + "; ".join(f"{key}: {message}" for key, message in problems)
            )

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def tls(self) -> bool:
        return _is_tls(self.security_protocol)

    @property
    def sasl(self) -> bool:
        return _is_sasl(self.security_protocol)

    def describe(self) -> str:
        """``security_protocol=SASL_SSL sasl_mechanism=SCRAM-SHA-512 user=alice`` (no secret)."""
        text = f"security_protocol={self.security_protocol}"
        if self.sasl:
            text += f" sasl_mechanism={self.sasl_mechanism} user={self.username}"
        return text

    def _secret(self, env: str | None, file: str | Path | None, what: str) -> str:
        """The secret from variable ``env`` or the first line of ``file`` (ConfigError naming
        the variable or file, never the value)."""
        if env is not None:
            value = os.environ.get(env)
            if not value:
                raise ConfigError(f"KafkaSecurity: {what}: the environment variable {env} is unset")
            return value
        assert file is not None
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise ConfigError(
                f"KafkaSecurity: {what}: cannot read {file}: {exc.strerror or exc}"
            ) from None
        value = text.splitlines()[0] if text else ""
        if not value:
            raise ConfigError(f"KafkaSecurity: {what}: the file {file} is empty")
        return value

    def client_options(self) -> dict[str, Any]:
        """aiokafka's keyword arguments for these settings (``security_protocol``,
        ``ssl_context``, ``sasl_mechanism``, ``sasl_plain_username``/``…password``).

        Reads the password now (a rotated secret is picked up by the next client). The result
        holds the password: pass it to aiokafka, never log it.
        """
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:
            options["ssl_context"] = self._ssl_context()
        if self.sasl:
            _redact_sasl_in_aiokafka_logs()
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self._secret(
                self.password_env, self.password_file, "password"
            )
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        from aiokafka.helpers import create_ssl_context

        key_password = None
        if self.key_password_env is not None:
            key_password = self._secret(self.key_password_env, None, "key_password_env")
        try:
            context = create_ssl_context(
                cafile=None if self.ca_file is None else str(self.ca_file),
                certfile=None if self.cert_file is None else str(self.cert_file),
                keyfile=None if self.key_file is None else str(self.key_file),
                password=key_password,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            files = ", ".join(
                f"{key}={path}"
                for key in ("ca_file", "cert_file", "key_file")
                if (path := getattr(self, key)) is not None
            )
            reason = getattr(exc, "reason", None) or exc.__class__.__name__
            raise ConfigError(
                f"KafkaSecurity: cannot load the TLS files ({files or 'system CAs'}): {reason} "
                "(expected PEM certificates, and an unencrypted key or key_password_env)"
            ) from None
        context.check_hostname = self.check_hostname
        return context


def resolve_paths(options: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``options`` (KafkaSecurity's fields) with relative file paths taken relative to ``base``
    (a job file's directory)."""
    return {
        key: str(base / value)
        if key in _FILES and value is not None and not Path(value).is_absolute()
        else value
        for key, value in options.items()
    }


class _RedactSaslRequests(logging.Filter):
    """aiokafka logs each request it sends at DEBUG, a SASL PLAIN request with the password in
    its bytes: such a request is shown by its name only."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_is_sasl_request(a) for a in args):
            record.args = tuple(
                f"<{type(a).__name__}: redacted>" if _is_sasl_request(a) else a for a in args
            )
        return True


def _is_sasl_request(value: object) -> bool:
    return type(value).__name__.startswith("SaslAuthenticate")


_REDACT = _RedactSaslRequests()


def _redact_sasl_in_aiokafka_logs() -> None:
    logger = logging.getLogger("aiokafka.conn")
    if _REDACT not in logger.filters:
        logger.addFilter(_REDACT)


# --- explaining a failed connection ------------------------------------------------------------


@dataclass(frozen=True)
class ConnectDiagnosis:
    """Why connecting failed: ``text`` (one line, one phrase per broker, no secret) and whether
    the cause is ``permanent`` (credentials, certificates, TLS: retrying cannot help)."""

    text: str
    permanent: bool

    def __str__(self) -> str:
        return self.text


async def diagnose_connect_failure(
    bootstrap_servers: str | Sequence[str],
    security: KafkaSecurity | None,
    connect_timeout: float | None = None,
) -> ConnectDiagnosis:
    """Why connecting to each broker fails (see :class:`ConnectDiagnosis`).

    Per broker, in parallel: a TCP probe (refused / no answer), then one handshake with
    ``security`` (TLS, ApiVersions, SASL) within ``min(connect_timeout, HANDSHAKE_TIMEOUT)``:
    at most ``PROBE_TIMEOUT + HANDSHAKE_TIMEOUT`` seconds in all.
    """
    handshake_timeout = min(connect_timeout or HANDSHAKE_TIMEOUT, HANDSHAKE_TIMEOUT)
    from .sinks.kafka import broker_addresses

    try:
        options = {} if security is None else security.client_options()
    except ConfigError as exc:  # e.g. the password file vanished since construction
        return ConnectDiagnosis(str(exc), permanent=True)
    addresses = broker_addresses(bootstrap_servers)
    found = await asyncio.gather(
        *(_diagnose(h, p, options, handshake_timeout) for h, p in addresses)
    )
    if not found:
        return ConnectDiagnosis(f"no broker address in {bootstrap_servers!r}", permanent=True)
    return ConnectDiagnosis(
        "; ".join(text for text, _ in found), permanent=all(permanent for _, permanent in found)
    )


async def _diagnose(
    host: str, port: int, options: dict[str, Any], handshake_timeout: float
) -> tuple[str, bool]:
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        KafkaConnectionError,
        KafkaError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    from .sinks.kafka import PROBE_TIMEOUT, os_reason

    where = f"{host}:{port}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
    except TimeoutError:
        return f"{where}: no TCP answer within {PROBE_TIMEOUT:g}s", False
    except OSError as exc:
        return f"{where}: {os_reason(exc)}", False
    writer.close()
    protocol = options.get("security_protocol", "PLAINTEXT")
    timeout_ms = int(handshake_timeout * 1000)
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=timeout_ms, **options), handshake_timeout
        )
    except SaslAuthenticationFailed as exc:
        user, mechanism = options.get("sasl_plain_username"), options.get("sasl_mechanism")
        return (
            f"{where}: SASL authentication failed for user={user} ({mechanism}): {_one_line(exc)}",
            True,
        )
    except UnsupportedSaslMechanismError as exc:
        return f"{where}: {_one_line(exc)}", True
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or exc.reason
        return (
            f"{where}: the broker's TLS certificate is not trusted ({reason}; "
            "check ca_file / check_hostname)",
            True,
        )
    except ssl.SSLError as exc:
        reason = exc.reason or _one_line(exc)
        return f"{where}: the TLS handshake failed ({reason}; is it a TLS listener?)", True
    except TimeoutError:
        return (
            f"{where} accepts TCP connections but did not complete a {protocol} handshake "
            f"within {handshake_timeout:g}s (does this listener speak {protocol}?)",
            False,
        )
    except (KafkaConnectionError, ConnectionError):  # closed or reset by the broker
        return (
            f"{where}: the broker closed the connection during the {protocol} handshake "
            "(a client certificate required: cert_file/key_file? another security_protocol?)",
            False,
        )
    except OSError as exc:
        return f"{where}: {os_reason(exc) or type(exc).__name__}", False
    except KafkaError as exc:
        return f"{where}: {type(exc).__name__}: {_one_line(exc)}", False
    conn.close()
    return f"{where} accepts a {protocol} connection now (the failure was transient?)", False


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())


# --- command-line flags -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--security-protocol`` … flags (one group); :func:`from_args` reads them."""
    group = parser.add_argument_group(
        "Kafka security",
        "TLS and SASL; the password comes from an environment variable or a file, never a flag",
    )
    group.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS, default=None)
    group.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS, default=None)
    group.add_argument("--sasl-username", metavar="USER", default=None)
    group.add_argument(
        "--sasl-password-env", metavar="VAR", default=None, help="variable holding the password"
    )
    group.add_argument(
        "--sasl-password-file", metavar="FILE", default=None, help="file holding the password"
    )
    group.add_argument("--ssl-ca-file", metavar="PEM", default=None, help="CAs to trust")
    group.add_argument("--ssl-cert-file", metavar="PEM", default=None, help="client certificate")
    group.add_argument("--ssl-key-file", metavar="PEM", default=None, help="client key")
    group.add_argument(
        "--ssl-key-password-env", metavar="VAR", default=None, help="variable: the key's password"
    )
    group.add_argument(
        "--ssl-no-check-hostname",
        dest="ssl_check_hostname",
        action="store_false",
        help="do not check the broker's certificate names its host",
    )


def table_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The flags of :func:`add_arguments` as a job file's ``security`` table (the keys of
    :class:`KafkaSecurity`); None when none was given. Checked like :func:`from_args`."""
    security = from_args(args)
    if security is None:
        return None
    table: dict[str, Any] = {"security_protocol": args.security_protocol}
    table.update(
        (key, value)
        for key, value in {
            "sasl_mechanism": args.sasl_mechanism,
            "username": args.sasl_username,
            "password_env": args.sasl_password_env,
            "password_file": args.sasl_password_file,
            "ca_file": args.ssl_ca_file,
            "cert_file": args.ssl_cert_file,
            "key_file": args.ssl_key_file,
            "key_password_env": args.ssl_key_password_env,
        }.items()
        if value is not None
    )
    if not args.ssl_check_hostname:
        table["check_hostname"] = False
    return table


def from_args(args: argparse.Namespace) -> KafkaSecurity | None:
    """The KafkaSecurity the flags of :func:`add_arguments` describe; None when none was given."""
    values = {
        "sasl_mechanism": args.sasl_mechanism,
        "username": args.sasl_username,
        "password_env": args.sasl_password_env,
        "password_file": args.sasl_password_file,
        "ca_file": args.ssl_ca_file,
        "cert_file": args.ssl_cert_file,
        "key_file": args.ssl_key_file,
        "key_password_env": args.ssl_key_password_env,
    }
    given = {k: v for k, v in values.items() if v is not None}
    if args.security_protocol is None:
        if given or not args.ssl_check_hostname:
            raise ConfigError("the --sasl-*/--ssl-* flags need --security-protocol")
        return None
    return KafkaSecurity(
        security_protocol=args.security_protocol,
        check_hostname=args.ssl_check_hostname,
        **given,
    )


__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "ConnectDiagnosis",
    "KafkaSecurity",
    "add_arguments",
    "diagnose_connect_failure",
    "from_args",
    "resolve_paths",
    "structure_problems",
    "table_from_args",
]
