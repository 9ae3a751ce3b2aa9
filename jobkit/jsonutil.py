"""One canonical JSON encoder, and the check that tells which key cannot be stored."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidParams

_HINTS = {
    "datetime": "convert it with .isoformat()",
    "date": "convert it with .isoformat()",
    "time": "convert it with .isoformat()",
    "timedelta": "store .total_seconds()",
    "set": "convert it to a sorted list",
    "frozenset": "convert it to a sorted list",
    "UUID": "convert it with str()",
    "Decimal": "convert it to str or float",
    "bytes": "decode or base64-encode it to a str",
    "bytearray": "decode or base64-encode it to a str",
}


def check_json(value: Any, what: str = "params", path: str = "") -> Any:
    """Return ``value`` as plain JSON data (tuples become lists) or raise :class:`InvalidParams`.

    The rules are the strictest of our backends, so a value accepted here is stored
    identically on SQLite and PostgreSQL: no NaN/Infinity, no ``\\u0000`` (PostgreSQL's
    JSONB refuses it), string keys only, and nothing but dict/list/str/int/float/bool/None.
    """
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidParams(path, "contains a NUL character (\\u0000), which PostgreSQL "
                                "cannot store; remove it or encode the text", what)
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidParams(path, f"{value!r} is not valid JSON; use null or a string", what)
        return float(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidParams(f"{path}[{key!r}]", f"key is a {type(key).__name__}; "
                                    "JSON object keys must be strings", what)
            if "\x00" in key:
                raise InvalidParams(f"{path}[{key!r}]", "key contains a NUL character (\\u0000)",
                                    what)
            out[key] = check_json(item, what, f"{path}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [check_json(item, what, f"{path}[{i}]") for i, item in enumerate(value)]
    name = type(value).__name__
    hint = _HINTS.get(name, "convert it to str, a number, a list or a dict")
    raise InvalidParams(path, f"a {name} is not JSON; {hint}", what)


def check_params(params: Any) -> dict[str, Any]:
    """Validate job params: a JSON object (``None`` means ``{}``)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidParams("", f"must be a dict (a JSON object), got {type(params).__name__}")
    return check_json(params, "params")  # type: ignore[no-any-return]


def dumps(value: Any) -> str:
    """The canonical encoding used for every JSON column."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
