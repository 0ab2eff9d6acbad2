"""Store URLs (CLI ``--into``, job files) → sinks, following SQLAlchemy's convention.

================================================  ============================================
``duckdb:///relative/path.db``                    :class:`DuckDBUpsert` on a relative path
``duckdb:////absolute/path.db``                   … on an absolute path
``postgresql://user@host:port/db``                :class:`PostgresUpsert` (also ``postgres://``,
                                                  ``postgresql+asyncpg://``)
``iceberg://?uri=sqlite:///cat.db&warehouse=…``   :class:`IcebergUpsert`; query parameters are the
                                                  pyiceberg catalog properties (``name`` defaults
                                                  to ``default``, ``type`` to ``sql`` when ``uri``
                                                  is given); the identifier is ``table``
                                                  (``namespace.table``)
``kafka://host:port/topic``                       :class:`KafkaUpsert`; without a path the topic is
                                                  ``table``
``parquet:///path`` / ``parquet+s3://bucket/pre``  :class:`ParquetSink` (``time_column=`` option)
================================================  ============================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlsplit

from ..errors import ConfigError
from .base import Sink

SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "key")


def redact_url(url: str) -> str:
    """``url`` safe to show in messages: the password of its user info and query values whose
    name suggests a secret (``password``, ``token``, ``secret_key`` …) become ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        hidden = [(k, "***" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in pairs]
        query = urlencode(hidden, safe="/:*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    rest = f"{netloc}{parts.path}" + (f"?{query}" if query else "")
    rest += f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{rest}" if "://" in url else rest


def _duckdb_path(url: str) -> str:
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        raise ConfigError(f"duckdb URL must be duckdb:///relative.db or duckdb:////abs.db: {url!r}")
    path = unquote(rest[1:])  # duckdb:///rel → "rel"; duckdb:////abs → "/abs"
    if not path:
        raise ConfigError(f"duckdb URL names no file: {url!r}")
    return path


def sink_from_url(
    url: str,
    *,
    table: str,
    key: str | Sequence[str],
    version: str | None = None,
    **options: Any,
) -> Sink:
    """The sink a store URL names (table in the URL scheme's sense: see the module docstring)."""
    if "://" not in url:
        raise ConfigError(
            f"not a store URL: {url!r} (e.g. duckdb:///file.db, postgresql://user@host/db, "
            "iceberg://?uri=…&warehouse=…, kafka://host:port/topic)"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "duckdb":
        from .duckdb import DuckDBUpsert

        return DuckDBUpsert(_duckdb_path(url), table, key, version, **options)
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        from .postgres import PostgresUpsert

        dsn = "postgresql://" + url.split("://", 1)[1]
        return PostgresUpsert(dsn, table, key, version, **options)
    if scheme == "iceberg":
        from .iceberg import IcebergUpsert

        parsed = urlparse(url)
        props = dict(parse_qsl(parsed.query, keep_blank_values=True))
        if "uri" in props:
            props.setdefault("type", "sql")
        if not props:
            raise ConfigError(
                f"iceberg URL carries no catalog properties: {url!r} "
                "(e.g. iceberg://?uri=sqlite:///cat.db&warehouse=file:///wh)"
            )
        return IcebergUpsert(table, props, key, version, **options)
    if scheme == "kafka":
        from .kafka import KafkaUpsert

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ConfigError(f"kafka URL needs host:port: {url!r}")
        topic = parsed.path.strip("/") or table
        return KafkaUpsert(topic, key, parsed.netloc, version, **options)
    if scheme in ("parquet", "parquet+s3"):
        from .parquet import ParquetSink

        time_column = options.pop("time_column", None) or version
        if not time_column:
            raise ConfigError("parquet URL: pass time_column=… (the column to partition by)")
        rest = url.split("://", 1)[1]
        path = _duckdb_path(url) if scheme == "parquet" else "s3://" + rest
        return ParquetSink(path, time_column, **options)
    raise ConfigError(
        f"unknown store URL scheme {scheme!r} in {url!r}; "
        "use duckdb://, postgresql://, iceberg://, kafka:// or parquet://"
    )
