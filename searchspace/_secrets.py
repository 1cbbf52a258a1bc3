"""Credentials never enter slimtune through a URI, and never leave it in a message.

Every URI the tool accepts (the config's ``tracking.uri`` and ``storage``, ``--tracking-uri`` of
every command) goes through ``credentials_in``: a user name or password (``user:pw@host``) or a
secret in the query string (``?token=...``, ``?X-Amz-Signature=...``) is refused. Credentials
come from the environment instead: ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or
``MLFLOW_TRACKING_TOKEN`` for an MLflow server, the cloud SDK's own variables or files for
storage. ``mask_secrets`` is the safety net every printed error goes through.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

# Query parameters that carry a secret (compared in lower case): exact names, then fragments.
_SECRET_PARAMS = frozenset({"key", "sig", "sas", "code", "pass", "pw"})
_SECRET_FRAGMENTS = (
    "token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "signature",
    "credential",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "accesskey",
    "auth",
    "session",
)

CREDENTIALS_FIX = (
    "remove them from the URI and set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
    "(or MLFLOW_TRACKING_TOKEN) in the environment for an MLflow server; for a database or "
    "cloud storage, use its own environment variables or credential files (e.g. PGPASSWORD, "
    "~/.pgpass, AWS_ACCESS_KEY_ID)"
)

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"?#]+@")
_QUERY_SECRET = re.compile(r"(?P<name>[?&;][^=&;\s'\"#]+)=(?P<value>[^&;\s'\"#]*)")


def _is_secret_param(name: str) -> bool:
    low = name.lower()
    return low in _SECRET_PARAMS or any(f in low for f in _SECRET_FRAGMENTS)


def credentials_in(uri: str) -> str | None:
    """What secret ``uri`` holds, in words (``None`` when it holds none)."""
    parts = urlsplit(uri.strip())
    if "@" in parts.netloc:
        return "a user name or password (user:password@host)"
    secret = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    secret = [name for name in secret if _is_secret_param(name)]
    if secret:
        return f"a secret in its query string ({secret[0]}=...)"
    return None


def redact_uri(uri: str) -> str:
    """``uri`` with any user name, password or secret query parameter replaced by ``***``."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = _QUERY_SECRET.sub(_mask_param, "?" + parts.query)[1:] if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def mask_secrets(text: str) -> str:
    """``text`` with every URI credential in it masked: for messages, logs and argv."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _QUERY_SECRET.sub(_mask_param, text)


def _mask_param(m: re.Match[str]) -> str:
    name = m["name"]
    return f"{name}=***" if _is_secret_param(name[1:]) else m.group(0)
