"""The schema's revision: where a database is, and moving it to this jobkit's newest.

jobkit's schema changes ship as Alembic revisions in ``jobkit/migrations/versions``
(numbered ``0001``, ``0002``, …; see the README there). This module builds the Alembic
configuration in code (no ``alembic.ini``) and decides what happens when a process
opens a database:

- an empty database is created by running every revision;
- a database made by jobkit 0.1.0 (``jobkit_meta.schema_version = 1``, no
  ``alembic_version`` table) counts as revision ``0001`` and is stamped when it is
  first upgraded, never recreated;
- an older revision is upgraded in place: automatically on SQLite, on PostgreSQL only
  by ``jobkit migrate`` or with ``JOBKIT_AUTO_MIGRATE=true``;
- a revision this jobkit does not know (a newer jobkit upgraded it) is refused
  before anything is written.

Upgrades hold a lock for their whole transaction (PostgreSQL: an advisory lock, the
same key jobkit 0.1.0 used; SQLite: ``BEGIN IMMEDIATE``) and re-read the revision
under it, so processes starting together upgrade once. ``jobkit_meta.schema_version``
is kept equal to the current revision's number, so jobkit 0.1.0 (which reads only
that row) refuses a database upgraded past revision 1 with its own "upgrade jobkit".
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from .backends import backend_of
from .errors import JobkitError, SchemaError, SchemaOutdated, SchemaTooNew

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext, MigrationInfo
    from alembic.script import ScriptDirectory
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from .config import Settings

log = logging.getLogger("jobkit")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Where revisions are read from (tests add a folder of their own).
VERSION_LOCATIONS: tuple[str, ...] = (str(MIGRATIONS_DIR / "versions"),)
#: The revision a jobkit 0.1.0 database is.
V010_REVISION = "0001"
VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema is, compared with this jobkit's newest revision."""

    revision: str | None  #: None: no jobkit tables yet
    head: str
    stamped: bool  #: False for an empty database and for one made by jobkit 0.1.0
    known: bool  #: whether this jobkit has the revision

    @property
    def status(self) -> str:
        """``empty``, ``current``, ``outdated`` or ``newer``."""
        if self.revision is None:
            return "empty"
        if not self.known:
            return "newer"
        return "current" if self.revision == self.head else "outdated"

    def as_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "head": self.head, "status": self.status,
                "current": self.status == "current", "stamped": self.stamped}

    def __repr__(self) -> str:
        return f"<SchemaState {self.revision or 'empty'} {self.status} (head {self.head})>"


def alembic_config(url: str | None = None, *, output: io.StringIO | None = None,
                   locations: tuple[str, ...] | None = None) -> Config:
    """jobkit's Alembic configuration, built in code (nothing to find on disk but the scripts)."""
    from alembic.config import Config

    locations = VERSION_LOCATIONS if locations is None else locations
    cfg = Config(output_buffer=output)
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", _os_pathsep().join(locations))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _os_pathsep() -> str:
    import os

    return os.pathsep


def script_directory() -> ScriptDirectory:
    """The revisions this jobkit knows (read once per set of folders)."""
    return _script_directory(VERSION_LOCATIONS)


@functools.lru_cache(maxsize=8)
def _script_directory(locations: tuple[str, ...]) -> ScriptDirectory:
    with _quiet_alembic():  # its first import logs a line per plugin
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(alembic_config(locations=locations))
    heads = script.get_heads()
    if len(heads) != 1:
        raise JobkitError(f"jobkit's migrations have {len(heads)} heads ({', '.join(heads)}); "
                          "a revision's down_revision must be the previous newest revision")
    return script


def shipped_head() -> str:
    """The newest revision in jobkit's own ``migrations/versions`` folder."""
    head = _script_directory((str(MIGRATIONS_DIR / "versions"),)).get_current_head()
    assert head is not None
    return head


def head_revision() -> str:
    """This jobkit's newest schema revision."""
    head = script_directory().get_current_head()
    assert head is not None
    return head


def _known(revision: str) -> bool:
    from alembic.script.revision import ResolutionError

    try:
        return script_directory().revision_map.get_revision(revision) is not None
    except ResolutionError:
        return False


def _read_state(conn: Connection) -> SchemaState:
    """Read-only: the schema state seen through ``conn``."""
    from sqlalchemy import inspect

    head = head_revision()
    names = set(inspect(conn).get_table_names())
    if VERSION_TABLE in names:
        rows = [r[0] for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
        if len(rows) == 1:
            return SchemaState(rows[0], head, True, _known(rows[0]))
        if rows:
            raise SchemaError(f"the database has several jobkit schema revisions "
                              f"({', '.join(rows)}); this jobkit expects one")
    if "jobkit_meta" in names:
        value = conn.execute(text(
            "SELECT value FROM jobkit_meta WHERE key = 'schema_version'")).scalar()
        if value == "1":
            return SchemaState(V010_REVISION, head, False, True)
        if value is not None:  # not ours to guess: a newer jobkit's, or edited by hand
            return SchemaState(str(value), head, False, False)
    if "jobs" in names:
        raise SchemaError("the database has a jobs table but no jobkit schema version; "
                          "is it a jobkit database? Point JOBKIT_DATABASE_URL at another one")
    return SchemaState(None, head, False, True)


async def read_state(engine: AsyncEngine) -> SchemaState:
    """The schema state of ``engine``'s database, without writing anything."""
    async with engine.connect() as conn:
        # One snapshot for all the reads: a process upgrading meanwhile must not show us
        # its jobkit_meta row without its alembic_version table.
        await backend_of(conn).begin_snapshot(conn)
        state = await conn.run_sync(_read_state)
        await conn.rollback()
    return state


def _too_new(engine_url: Any, state: SchemaState) -> SchemaTooNew:
    from .urls import redact_url
    from .version import __version__

    return SchemaTooNew(redact_url(engine_url), str(state.revision), state.head, __version__)


async def _lock(conn: AsyncConnection) -> None:
    """Take the schema lock for the rest of ``conn``'s transaction."""
    await backend_of(conn).lock_schema(conn)


def _upgrade_sync(conn: Connection, target: str) -> tuple[SchemaState, SchemaState]:
    """Under the lock: re-read the state, stamp a 0.1.0 database, upgrade to ``target``."""
    before = _read_state(conn)
    if before.status == "newer":
        return before, before
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    with _quiet_alembic():
        if before.revision is not None and not before.stamped:
            _run_env(cfg, "stamp", V010_REVISION)
        _run_env(cfg, "upgrade", target)
    return before, _read_state(conn)


def _run_env(cfg: Config, verb: str, target: str, *, sql: bool = False,
             starting_rev: str | None = None) -> None:
    """Alembic's ``command.upgrade``/``stamp``, on the cached script directory."""
    from alembic.runtime.environment import EnvironmentContext

    script = script_directory()

    def upgrade(rev: Any, context: Any) -> Any:
        return script._upgrade_revs(target, rev)  # noqa: SLF001 - as command.upgrade does

    def stamp(rev: Any, context: Any) -> Any:
        return script._stamp_revs(target, rev)  # noqa: SLF001 - as command.stamp does

    with EnvironmentContext(cfg, script, fn=upgrade if verb == "upgrade" else stamp,
                            as_sql=sql, starting_rev=starting_rev, destination_rev=target):
        script.run_env()


@contextlib.contextmanager
def _quiet_alembic() -> Iterator[None]:
    """jobkit says what happened in one line; Alembic's own INFO lines only at DEBUG."""
    logger = logging.getLogger("alembic")
    level = logger.level
    if not log.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


async def upgrade(engine: AsyncEngine, target: str = "head") -> tuple[SchemaState, SchemaState]:
    """Upgrade the database to ``target`` (default: this jobkit's newest revision).

    One transaction under the schema lock; another process that upgraded meanwhile
    leaves nothing to do. Returns the states before and after. Refuses (writing
    nothing) a database at a revision this jobkit does not know.
    """
    state = await read_state(engine)
    if state.status == "newer":
        raise _too_new(engine.url, state)
    if state.status == "current" and state.stamped and target == "head":
        return state, state
    async with engine.connect() as conn:
        await _lock(conn)
        before, after = await conn.run_sync(_upgrade_sync, target)
        if before.status == "newer":
            await conn.rollback()
            raise _too_new(engine.url, before)
        await conn.commit()
    message = describe_change(before, after)
    if message:
        log.info("%s in %s", message, _shown(engine))
    return before, after


def describe_change(before: SchemaState, after: SchemaState) -> str | None:
    """What an upgrade did, in words (None: nothing)."""
    if before.revision is None:
        return f"jobkit schema created at revision {after.revision}"
    v010 = " (a jobkit 0.1.0 database, now stamped)" if not before.stamped else ""
    if before.revision != after.revision:
        return f"jobkit schema upgraded from revision {before.revision} to {after.revision}{v010}"
    if v010:
        return f"jobkit 0.1.0 schema stamped as revision {after.revision}"
    return None


def _shown(engine: AsyncEngine) -> str:
    from .urls import redact_url

    return redact_url(engine.url)


async def ensure_schema(engine: AsyncEngine, settings: Settings | None = None, *,
                        create: bool = True) -> SchemaState:
    """Make the database usable by this jobkit, or refuse with one clear line.

    Empty: created (when ``create``). Older: upgraded on SQLite; on PostgreSQL only with
    ``auto_migrate``, else :class:`SchemaOutdated`. Unknown (newer): :class:`SchemaTooNew`.
    A database already current is only read.
    """
    from .config import Settings

    settings = settings or Settings.from_env()
    state = await read_state(engine)
    if state.status == "current":
        return state
    if state.status == "newer":
        raise _too_new(engine.url, state)
    if state.status == "empty" and not create:
        raise SchemaError(f"{_shown(engine)} has no jobkit tables; create them with "
                          "`jobkit init` (or `jobkit migrate`)")
    if state.status == "outdated" and not backend_of(engine).MIGRATES_ON_OPEN \
            and not settings.auto_migrate:
        raise SchemaOutdated(_shown(engine), str(state.revision), state.head)
    return (await upgrade(engine))[1]


# ---------------------------------------------------------------------------
# Offline SQL (`jobkit migrate --sql`)
# ---------------------------------------------------------------------------
#: ``--from`` values that are not revision ids.
FROM_EMPTY = "base"
FROM_V010 = "0.1.0"


def offline_sql(url: str, start: str) -> str:
    """The SQL that upgrades a database at ``start`` to this jobkit's newest revision.

    ``start``: ``"base"`` (an empty database), ``"0.1.0"`` (made by jobkit 0.1.0, not yet
    stamped) or a revision id. The script is one transaction; on PostgreSQL it takes the
    same advisory lock as ``jobkit migrate``.
    """
    head = head_revision()
    if start not in (FROM_EMPTY, FROM_V010) and not _known(start):
        raise SchemaError(f"unknown schema revision {start!r}; give base, 0.1.0 or one of "
                          f"{', '.join(_revisions())}")
    buf = io.StringIO()
    cfg = alembic_config(url, output=buf)
    cfg.attributes["stamp_v010"] = start == FROM_V010
    origin = V010_REVISION if start == FROM_V010 else start
    with _quiet_alembic():
        _run_env(cfg, "upgrade", "head", sql=True,
                 starting_rev=None if origin == FROM_EMPTY else origin)
    if origin == head and start != FROM_V010:
        buf.write(f"-- the schema is already at revision {head}: nothing to do\n")
    return buf.getvalue()


def _revisions() -> list[str]:
    return [s.revision for s in reversed(list(script_directory().walk_revisions()))]


# ---------------------------------------------------------------------------
# Called from migrations/env.py
# ---------------------------------------------------------------------------
def record_version(ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any],
                   run_args: Mapping[str, Any]) -> None:
    """Keep ``jobkit_meta.schema_version`` equal to the current revision's number."""
    if len(heads) == 1 and (head := next(iter(heads))).isdigit():
        ctx.impl._exec(text(  # noqa: SLF001 - MigrationContext has no public execute()
            f"UPDATE jobkit_meta SET value = '{int(head)}' WHERE key = 'schema_version'"))


def offline_preamble(ctx: MigrationContext, stamp_v010: bool) -> None:
    """The lock (and, for a 0.1.0 database, the stamp) at the top of an offline script."""
    lock = backend_of(ctx).SCHEMA_LOCK
    if lock is not None:
        ctx.impl._exec(lock)  # noqa: SLF001
    if stamp_v010:
        ctx.impl._exec(text(  # noqa: SLF001
            f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
            f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"))
        ctx.impl._exec(text(  # noqa: SLF001
            f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('{V010_REVISION}')"))
