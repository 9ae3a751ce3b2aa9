"""Alembic's environment for jobkit's migrations.

jobkit runs it through :mod:`jobkit.schema`, which builds the configuration in code and
hands over a connection already holding the schema lock inside its transaction
(``config.attributes["connection"]``). Offline (``jobkit migrate --sql``) it writes one
transaction of SQL. Run by Alembic's own command line instead (``alembic -c …``), it
opens jobkit's async engine itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection, make_url

from jobkit import schema
from jobkit.backends import backend_of
from jobkit.models import Base

config = context.config


def _configure(**kwargs: Any) -> None:
    context.configure(target_metadata=Base.metadata, on_version_apply=schema.record_version,
                      transactional_ddl=True, **kwargs)


def run_offline() -> None:
    url = make_url(config.get_main_option("sqlalchemy.url") or "")
    # The backend's default dialect (no driver is loaded to write SQL).
    _configure(url=f"{backend_of(url).NAME}://", literal_binds=True)
    with context.begin_transaction():
        schema.offline_preamble(context.get_context(),
                                bool(config.attributes.get("stamp_v010")))
        context.run_migrations()


def run_with(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async() -> None:
    from jobkit.database import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        async with engine.connect() as conn:
            await schema._lock(conn)  # noqa: SLF001
            await conn.run_sync(run_with)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
elif isinstance(config.attributes.get("connection"), Connection):
    run_with(config.attributes["connection"])
else:  # Alembic's own command line: the only place this file starts an event loop
    asyncio.run(run_async())
