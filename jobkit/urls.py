"""URLs: hide their secrets when shown, check them when given. A foundation module: it
imports nothing from jobkit but the errors, so config, database, alerts and every face can
use it without an import cycle."""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .errors import DatabaseURLError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./jobkit.db"
SUPPORTED_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")


#: Query parameters whose value is a secret (drivers accept a password there too).
_SECRET_PARAM = re.compile(r"pass(word|wd|phrase)?$|pwd$|secret|token|credential|api_?key|"
                           r"^auth", re.IGNORECASE)
_SECRET_IN_QUERY = re.compile(r"([?&;])([^=&;#]+)=([^&;#]*)")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)@")


def redact_url(url: str | URL) -> str:
    """The URL as text with every secret replaced by ``***``: the password of the user
    part and query parameters such as ``?password=``, ``sslpassword=`` or ``token=`` (a
    driver takes the password from either place). Works on malformed URLs too."""
    text_url = url.render_as_string(hide_password=False) if not isinstance(url, str) else str(url)

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}{':***' if sep else ''}@"

    def query(m: re.Match[str]) -> str:
        key = m.group(2)
        secret = _SECRET_PARAM.search(unquote(key)) is not None
        return f"{m.group(1)}{key}={'***' if secret else m.group(3)}"

    text_url = _USERINFO.sub(userinfo, text_url, count=1)
    head, sep, rest = text_url.partition("?")
    return head + sep + _SECRET_IN_QUERY.sub(query, "?" + rest)[1:] if sep else text_url


def check_url(env_name: str, url: str) -> None:
    """Raise :class:`DatabaseURLError` (naming ``env_name``) unless ``url`` uses a supported
    scheme; the message says which URL to write instead."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SUPPORTED_SCHEMES:
        if scheme == "sqlite":
            hint = "use sqlite+aiosqlite:///path/to/file.db"
        elif scheme.startswith("postgres"):
            hint = "use postgresql+asyncpg://user@host:5432/dbname"
        else:
            hint = "e.g. sqlite+aiosqlite:///./jobkit.db or postgresql+asyncpg://user@host/db"
        raise DatabaseURLError(env_name, redact_url(url),
                               f"a URL starting with {' or '.join(SUPPORTED_SCHEMES)}; {hint}")


def safe_url(url: str) -> str:
    """Scheme, host and port only: a webhook's path, query and credentials are secrets."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def check_alert_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an http(s) URL with a host (the message hides secrets)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the alert URL must be an http:// or https:// URL with a host, "
                         f"got {parts.scheme or '(no scheme)'}://{parts.hostname or '(no host)'}")


