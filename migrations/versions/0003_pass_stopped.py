"""A pass ended by SIGTERM/SIGINT is `stopped`: its own outcome, not a failure.

SQLite cannot alter a check constraint: batch mode rebuilds the table with the new one (the
constraint is found by its name, ``ck_passes_outcome``, from the naming convention). PostgreSQL
drops and adds the constraint in place.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = ("running", "complete", "incomplete", "failed")
NEW = (*OLD, "stopped")
OLD_COMMENT = "running, complete, incomplete (changed nothing) or failed"
NEW_COMMENT = "running, complete, incomplete (changed nothing), failed, or stopped (by SIGTERM/SIGINT)"


def _in(values: tuple[str, ...]) -> str:
    return f"outcome IN ({', '.join(repr(v) for v in values)})"


def _replace(values: tuple[str, ...], comment: str, old_comment: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        # The rebuild drops `passes`, which audit_log.pass_id refers to, and foreign keys cannot be
        # switched off inside the migration's transaction (deferring them does not help: SQLite
        # counts the drop's violations and never uncounts them). So the references are set aside
        # and put back, in the same transaction: all or nothing.
        op.execute(sa.text("CREATE TEMP TABLE _vhdgc_pass_refs AS "
                           "SELECT id, pass_id FROM audit_log WHERE pass_id IS NOT NULL"))
        op.execute(sa.text("UPDATE audit_log SET pass_id = NULL WHERE pass_id IS NOT NULL"))
    with op.batch_alter_table("passes") as batch:
        batch.drop_constraint(op.f("ck_passes_outcome"), type_="check")
        batch.create_check_constraint("outcome", _in(values))
        batch.alter_column(
            "outcome",
            existing_type=sa.String(length=16),
            existing_nullable=False,
            comment=comment,
            existing_comment=old_comment,
        )
    if sqlite:
        op.execute(sa.text("UPDATE audit_log SET pass_id = (SELECT r.pass_id FROM _vhdgc_pass_refs r "
                           "WHERE r.id = audit_log.id) WHERE id IN (SELECT id FROM _vhdgc_pass_refs)"))
        op.execute(sa.text("DROP TABLE _vhdgc_pass_refs"))


def upgrade() -> None:
    _replace(NEW, NEW_COMMENT, OLD_COMMENT)


def downgrade() -> None:
    # A stopped pass changed nothing more than a failed one: it goes back as failed.
    op.execute(sa.text("UPDATE passes SET outcome = 'failed' WHERE outcome = 'stopped'"))
    _replace(OLD, OLD_COMMENT, NEW_COMMENT)
