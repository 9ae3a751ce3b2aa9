"""The fast lane's rows: the driver's values of a :class:`~jobkit.backends.common.Prepared`
statement's columns converted exactly as a session converts them, in one step per column
for the types of jobkit's own tables (:func:`fast_converter`, used by
``Prepared.compiled``; ``Compiled.rows`` applies them). Most of it is SQLite's (its
datetimes, UUIDs and JSON are text); PostgreSQL's driver returns the Python types already.
"""

from __future__ import annotations

import json
import numbers
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Uuid
from sqlalchemy.dialects.sqlite import base as sqlite_base
from sqlalchemy.engine.processors import str_to_datetime

from ..models import JobStatus, StatusType, UTCDateTime, as_utc

# The fast lane's rows. SQLAlchemy's result processors of a claimed job's columns cost
# ~25 us a row (a TypeDecorator's closure around the driver type's processor around
# process_result_value, for each of five datetimes, the id, the status, two JSON values).
# For the types jobkit's tables use, the same conversion is done here in one step each; any
# other type keeps SQLAlchemy's processor. Each fast converter equals the processor it
# replaces for every value (tests/test_fast_lane.py holds them to it), and returns None
# for None, so a None is not passed to it at all.
_STATUS_OF: dict[str, JobStatus] = {s.value: s for s in JobStatus}
_SQLITE_JSON: Any = getattr(sqlite_base, "_SQliteJson", None)
_from_iso = datetime.fromisoformat
_scan_json = json._default_decoder.scan_once  # type: ignore[attr-defined]


def _status(value: Any) -> JobStatus:
    """``StatusType``'s loading: ``JobStatus(value)``."""
    found = _STATUS_OF.get(value) if value.__class__ is str else None
    return found if found is not None else JobStatus(value)


def fast_converter(type_: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """A faster equivalent of ``type_``'s result processor on ``dialect`` (None: keep
    SQLAlchemy's). Equivalent also means: it maps None to None (the caller skips Nones)."""
    impl = type_.dialect_impl(dialect)
    if type(type_) is UTCDateTime:
        parse = impl.impl_instance.result_processor(dialect, None)
        if parse is None:  # the driver returns datetimes (asyncpg): process_result_value
            return as_utc
        if parse is not str_to_datetime:  # a custom storage format: keep SQLAlchemy's
            return None

        def utc_datetime(value: Any) -> Any:
            # as_utc(str_to_datetime(value)), i.e. fromisoformat(value) with UTC for a
            # naive value, which is how SQLite's text holds them: parsed with the offset
            # appended (datetime.replace costs five times the parse).
            if value.__class__ is str:
                try:
                    out = _from_iso(value + "+00:00")
                except ValueError:  # it has an offset of its own, or is no datetime
                    pass
                else:
                    if out.tzinfo is UTC:  # (a date alone ignores the offset)
                        return out
            return as_utc(parse(value))
        return utc_datetime
    if type(type_) is StatusType:
        return _status if impl.impl_instance.result_processor(dialect, None) is None else None
    if type(type_) is Uuid and type_.as_uuid and not (dialect.supports_native_uuid
                                                       and type_.native_uuid):
        return uuid.UUID  # (SQLAlchemy's processor wraps this same call)
    if _SQLITE_JSON is not None and type(impl) is _SQLITE_JSON:
        if impl._str_impl.result_processor(dialect, None) is not None:
            return None
        loads = dialect._json_deserializer or json.loads
        scan = _scan_json if loads is json.loads else None

        def json_value(value: Any) -> Any:
            # loads(value), and SQLite's number for a number (_SQliteJson's processor).
            if scan is not None and value.__class__ is str:
                # What json.loads does for a value without surrounding whitespace.
                try:
                    out, end = scan(value, 0)
                except (StopIteration, ValueError):
                    pass  # json.loads says why (or handles the whitespace)
                else:
                    if end == len(value):
                        return out
            try:
                return loads(value)
            except TypeError:
                if isinstance(value, numbers.Number):
                    return value
                raise
        return json_value
    return None
