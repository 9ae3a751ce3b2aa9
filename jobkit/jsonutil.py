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


#: Deepest nesting of lists/objects accepted in params and results.
MAX_DEPTH = 64
#: Integers must fit in 64 bits (every JSON reader, and both backends, keep them exact).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text on every backend, or None."""
    if "\x00" in value:
        return ("contains a NUL character (\\u0000), which PostgreSQL cannot store; remove it "
                "or encode the text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"contains a lone surrogate ({value[exc.start]!a}) at position {exc.start}, "
                "which is not valid Unicode text; send valid UTF-8")
    return None


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters; safe for huge integers."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"
    text = ascii(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_json(value: Any, what: str = "params", path: str = "", _depth: int = 0) -> Any:
    """Return ``value`` as plain JSON data (tuples become lists) or raise :class:`InvalidParams`.

    The rules are the strictest of our backends, so a value accepted here is stored
    identically on SQLite and PostgreSQL: no NaN/Infinity, no ``\\u0000`` (PostgreSQL's
    JSONB refuses it), no lone surrogates, integers within 64 bits, at most
    :data:`MAX_DEPTH` levels of nesting, string keys only, and nothing but
    dict/list/str/int/float/bool/None.
    """
    return _check(value, what, (path,), _depth)


def _where(at: tuple[Any, ...]) -> str:
    """The path of a value (``['a'][0]``) from :func:`_check`'s chain: ``(root path,)`` or
    ``(parent chain, key)``, formatted only when something is wrong."""
    keys = []
    while len(at) == 2:
        at, key = at
        keys.append(f"[{key!r}]")
    return str(at[0]) + "".join(reversed(keys))


def _check(value: Any, what: str, at: tuple[Any, ...], depth: int) -> Any:
    kind = type(value)
    # The common cases first, by exact type (subclasses take the general way below).
    if kind is str:
        if value.isascii() and "\x00" not in value:  # (ASCII: no lone surrogate)
            return value
    elif kind is int:
        if INT64_MIN <= value <= INT64_MAX:
            return value
    elif kind is float:
        if math.isfinite(value):
            return value
    elif kind is dict and depth < MAX_DEPTH:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or "\x00" in key:
                _check_key(key, what, at)
            out[key] = _check(item, what, (at, key), depth + 1)
        return out
    elif kind is list and depth < MAX_DEPTH:
        return [_check(item, what, (at, i), depth + 1) for i, item in enumerate(value)]
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise InvalidParams(_where(at), problem, what)
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidParams(_where(at), f"{short_repr(value)} does not fit in 64 bits; send "
                                "large numbers as strings", what)
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidParams(_where(at), f"{value!r} is not valid JSON; use null or a string",
                                what)
        return float(value)
    if isinstance(value, (dict, list, tuple)) and depth >= MAX_DEPTH:
        raise InvalidParams(_where(at), f"is nested more than {MAX_DEPTH} levels deep; "
                            "flatten it", what)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            _check_key(key, what, at)
            out[key] = _check(item, what, (at, key), depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_check(item, what, (at, i), depth + 1) for i, item in enumerate(value)]
    name = type(value).__name__
    hint = _HINTS.get(name, "convert it to str, a number, a list or a dict")
    raise InvalidParams(_where(at), f"a {name} is not JSON; {hint}", what)


def _check_key(key: Any, what: str, at: tuple[Any, ...]) -> None:
    """Raise :class:`InvalidParams` for an object key JSON cannot carry as it is."""
    if not isinstance(key, str):
        raise InvalidParams(f"{_where(at)}[{key!r}]", f"key is a {type(key).__name__}; "
                            "JSON object keys must be strings", what)
    problem = text_problem(key)
    if problem is not None:
        raise InvalidParams(f"{_where(at)}[{short_repr(key)}]", f"key {problem}", what)


def check_params(params: Any) -> dict[str, Any]:
    """Validate job params: a JSON object (``None`` means ``{}``)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidParams("", f"must be a dict (a JSON object), got {type(params).__name__}")
    return check_json(params, "params")  # type: ignore[no-any-return]


# json.dumps with these options makes a new encoder on every call; one is enough (an
# encoder keeps no state between calls).
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """The canonical encoding used for every JSON column."""
    if value is None:
        return "null"
    return _ENCODER.encode(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; use null or a string")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:30]} is too large for a float")
    return value


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` for untrusted input: ValueError (never RecursionError, never NaN or
    Infinity, never an integer too long to convert) with a short message."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"nested too deeply (more than {MAX_DEPTH} levels are refused)") \
            from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
