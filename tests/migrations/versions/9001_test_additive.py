"""A test-only revision on top of jobkit's newest: an additive change, as later issues make.

Tests add this folder to ``jobkit.schema.VERSION_LOCATIONS`` to prove that a database
moves forward keeping every row. It counts its own runs in ``jobkit_test_upgrades``
(one row per time its upgrade() ran), so "ten processes upgrade once" is a count.

Revision ID: 9001
Revises: jobkit's newest revision
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobkit.schema import shipped_head

revision = "9001"
# The newest revision jobkit ships, whatever later issues add.
down_revision = shipped_head()
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("test_note", sa.String(100), nullable=True))
    op.create_table("jobkit_test_upgrades",
                    sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("note", sa.String(100), nullable=False))
    op.execute("INSERT INTO jobkit_test_upgrades (note) VALUES ('upgraded')")


def downgrade() -> None:
    op.drop_table("jobkit_test_upgrades")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("test_note")
