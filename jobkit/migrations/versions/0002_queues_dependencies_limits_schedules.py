"""Named queues, job dependencies, per-type limits and schedules (issue 13).

Additive only: ``jobs.queue`` (every existing job is in ``'default'``), ``workers.queues``
(NULL: every queue), the per-queue claim index, the running-jobs-by-type index, and
three new tables. Workers of the previous jobkit keep working on the upgraded database
(they do not know queues, limits or dependencies, and claim from every queue).

Revision ID: 0002
Revises: 0001
Created: 2026-11-30
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)
_ELIGIBLE = "status IN ('pending', 'retry')"


def _partial(where: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queue", sa.String(100), nullable=False,
                                    server_default="default"))
    op.add_column("workers", sa.Column("queues", _JSON, nullable=True))
    op.create_index("ix_jobs_eligible_queue", "jobs",
                    ["queue", sa.text("priority DESC"), "created_at", "id"],
                    **_partial(_ELIGIBLE))
    op.create_index("ix_jobs_processing_type", "jobs", ["job_type"],
                    **_partial("status = 'processing'"))
    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("depends_on", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "depends_on"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["depends_on"], ["jobs.id"], ondelete="CASCADE"),
    )
    op.create_index("ix_job_dependencies_depends_on", "job_dependencies", ["depends_on"])
    op.create_table(
        "job_type_limits",
        sa.Column("job_type", sa.String(200), nullable=False),
        sa.Column("max_running", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("job_type"),
    )
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("job_type", sa.String(200), nullable=False),
        sa.Column("params", _JSON, nullable=False),
        sa.Column("queue", sa.String(100), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("every_seconds", sa.Float(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("last_tick_at", _TIME, nullable=False),
        sa.Column("next_tick_at", _TIME, nullable=False),
        sa.Column("last_job_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_schedules_next_tick_at", "schedules", ["next_tick_at"])


def downgrade() -> None:
    op.drop_index("ix_schedules_next_tick_at", table_name="schedules")
    for table in ("schedules", "job_type_limits", "job_dependencies"):
        op.drop_table(table)
    op.drop_index("ix_jobs_processing_type", table_name="jobs")
    op.drop_index("ix_jobs_eligible_queue", table_name="jobs")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("queues")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("queue")
