"""URLs of stores (MLflow's `tracking.uri`, an Optuna storage): their scheme, the password in them, the URL
without it, and the database driver kbk installs.

Plain Python; SQLAlchemy (which parses database URLs the way the stores will) is imported only when a URL holds
credentials.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
#: A password between `user:` and `@`, for what SQLAlchemy cannot parse.
_USER_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^:/@]+:([^@]*)@")


def url_scheme(url: str) -> str:
    """`sqlite`, `http`, `postgresql`, … (lower case, a `+driver` suffix removed), or "" for a plain path."""
    match = _SCHEME.match(url)
    if match is None or len(match.group(1)) == 1:  # `C:\...` is a Windows drive, not a scheme
        return ""
    return match.group(1).lower().split("+", 1)[0]


def url_password(url: str | None) -> str | None:
    """The password in a URL's user part (`postgresql://user:PW@host/db`, `http://user:PW@host`), or None."""
    if not url or "@" not in str(url):
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(str(url)).password or None
    except Exception:  # noqa: BLE001 (not a URL SQLAlchemy reads: a path, a journal file)
        match = _USER_PASSWORD.match(str(url))
        return match.group(1) if match and match.group(1) else None


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, for messages, params, logs and files."""
    secret = url_password(url)
    if secret is None:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.replace(f":{secret}@", ":***@")


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by `***` (secrets as found in a URL, and URL-quoted)."""
    from urllib.parse import quote, unquote

    for secret in secrets:
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if form:
                text = text.replace(form, "***")
    return text


def with_installed_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3; with only psycopg2 installed (kbk's dependency),
    name that driver rather than fail with an ImportError. Other URLs are returned as they are."""
    import importlib.util

    if url.lower().startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url
