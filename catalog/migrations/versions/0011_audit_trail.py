"""audit trail: where each event came from, the studies it concerns, append-only rows

Revision ID: 0011_audit_trail
Revises: 0010_cohort_projects
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_audit_trail"
down_revision = "0010_cohort_projects"
branch_labels = None
depends_on = None

_APPEND_ONLY = ("audit_event", "audit_event_study")


def upgrade() -> None:
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("door", sa.String(length=16), server_default="node", nullable=False)
        )
        batch_op.add_column(
            sa.Column("remote", sa.String(length=128), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("detail", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_audit_event_action"), ["action"], unique=False)
    op.create_table(
        "audit_event_study",
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["audit_event.id"]),
        sa.PrimaryKeyConstraint("event_id", "study_uid"),
    )
    with op.batch_alter_table("audit_event_study", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_event_study_study_uid"), ["study_uid"], unique=False
        )
    op.create_table(
        "audit_forward_cursor",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    _refuse_changes()


def _refuse_changes() -> None:
    """The database itself refuses UPDATE and DELETE on the trail's rows."""
    if op.get_bind().dialect.name == "sqlite":
        for table in _APPEND_ONLY:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
                )
        return
    op.execute(
        "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$"
    )
    for table in _APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in _APPEND_ONLY:
            for verb in ("update", "delete"):
                op.execute(f"DROP TRIGGER {table}_no_{verb}")
    else:
        for table in _APPEND_ONLY:
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute("DROP FUNCTION audit_append_only()")
    op.drop_table("audit_forward_cursor")
    with op.batch_alter_table("audit_event_study", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_event_study_study_uid"))
    op.drop_table("audit_event_study")
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_event_action"))
        batch_op.drop_column("detail")
        batch_op.drop_column("remote")
        batch_op.drop_column("door")
