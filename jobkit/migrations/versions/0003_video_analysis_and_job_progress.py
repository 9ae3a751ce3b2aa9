"""Real video analysis and job progress (issue 12).

- ``jobs.progress``, ``jobs.progress_message``, ``jobs.progress_at``: how far a running
  attempt has got (``jobkit.report_progress``); NULL for every existing job.
- ``video_assets.width``, ``height``, ``fps``: probed from an uploaded file; NULL for
  name-only uploads and for every existing asset.
- ``clips.thumbnail``: a small JPEG of the clip (real analyses only); NULL otherwise.

Additive only (nullable columns): workers of the previous jobkit keep working on an
upgraded database.

Revision ID: 0003
Revises: 0002
Created: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("progress", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("progress_message", sa.String(500), nullable=True))
    op.add_column("jobs", sa.Column("progress_at", _TIME, nullable=True))
    op.add_column("video_assets", sa.Column("width", sa.Integer(), nullable=True))
    op.add_column("video_assets", sa.Column("height", sa.Integer(), nullable=True))
    op.add_column("video_assets", sa.Column("fps", sa.Float(), nullable=True))
    op.add_column("clips", sa.Column("thumbnail", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clips") as batch:
        batch.drop_column("thumbnail")
    with op.batch_alter_table("video_assets") as batch:
        for column in ("fps", "height", "width"):
            batch.drop_column(column)
    with op.batch_alter_table("jobs") as batch:
        for column in ("progress_at", "progress_message", "progress"):
            batch.drop_column(column)
