"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Created: ${create_date.strftime('%Y-%m-%d')}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision = "${up_revision}"
down_revision = "${down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Additive changes only (new tables, nullable columns or columns with a server
    # default, new indexes), so workers still running the previous jobkit keep working.
    # Write it for both backends: SQLite cannot ALTER most things; use
    # `with op.batch_alter_table("jobs") as batch:` for anything but add_column.
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
