"""The jobkit 0.1.0 schema, exactly as 0.1.0's ``create_all`` made it.

A database made by jobkit 0.1.0 (``jobkit_meta.schema_version = 1`` and no
``alembic_version`` table) is recognised as this revision and stamped, never
recreated. Frozen: it does not import jobkit's models, which keep changing.

Revision ID: 0001
Revises:
Created: 2026-11-30
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)
_ELIGIBLE = "status IN ('pending', 'retry')"
_ACTIVE = "status IN ('pending', 'retry', 'processing')"

def _on_postgresql() -> bool:
    """True on PostgreSQL (asyncpg online, the default dialect offline): the NOTIFY trigger
    is PostgreSQL-only DDL."""
    return isinstance(op.get_context().dialect, postgresql.base.PGDialect)


_PG_NOTIFY = (
    """
    CREATE OR REPLACE FUNCTION jobkit_notify_jobs() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_notify('jobkit_jobs', coalesce(
            (SELECT string_agg(id::text, ',') FROM (SELECT id FROM new_jobs LIMIT 20) s), ''));
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE OR REPLACE TRIGGER jobkit_notify_jobs AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobkit_notify_jobs()
    """,
)


def _partial(where: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}


def upgrade() -> None:
    op.create_table(
        "jobkit_meta",
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("value", sa.String(500), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_type", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", _JSON, nullable=False),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=True),
        sa.Column("dedupe_key", sa.String(200), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("run_at", _TIME, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("started_at", _TIME, nullable=True),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.Column("locked_by", sa.String(200), nullable=True),
        sa.Column("locked_until", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_eligible", "jobs",
                    [sa.text("priority DESC"), "created_at", "id"], **_partial(_ELIGIBLE))
    op.create_index("ix_jobs_processing_lease", "jobs", ["locked_until"],
                    **_partial("status = 'processing'"))
    op.create_index("ix_jobs_status_finished", "jobs", ["status", "finished_at"])
    op.create_index("ux_jobs_dedupe_active", "jobs", ["dedupe_key"], unique=True,
                    **_partial(f"dedupe_key IS NOT NULL AND {_ACTIVE}"))
    op.create_table(
        "video_assets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("filename", sa.String(500), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("stored_path", sa.String(1000), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("jobs_done", sa.Integer(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("last_heartbeat_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "clips",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("video_asset_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("start_ms", sa.Integer(), nullable=False),
        sa.Column("end_ms", sa.Integer(), nullable=False),
        sa.Column("visual_score", sa.Float(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["video_asset_id"], ["video_assets.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_clips_job_id", "clips", ["job_id"])
    op.create_index("ix_clips_video_asset_id", "clips", ["video_asset_id"])
    if _on_postgresql():
        for ddl in _PG_NOTIFY:
            op.execute(ddl)
    # jobkit 0.1.0 reads this row; later revisions keep it equal to their number.
    op.execute("INSERT INTO jobkit_meta (key, value) VALUES ('schema_version', '1')")


def downgrade() -> None:
    if _on_postgresql():
        op.execute("DROP TRIGGER IF EXISTS jobkit_notify_jobs ON jobs")
        op.execute("DROP FUNCTION IF EXISTS jobkit_notify_jobs()")
    for table in ("clips", "workers", "video_assets", "jobs", "jobkit_meta"):
        op.drop_table(table)
