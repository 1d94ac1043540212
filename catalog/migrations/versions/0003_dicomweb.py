"""dicomweb: normalised columns for case-insensitive and fuzzy matching

Adds the folded description columns and the fuzzy person-name keys that
``catalog.query`` matches on, fills them for rows indexed before, and on PostgreSQL
(when pg_trgm is available) trigram indexes for infix patterns such as ``*doe*``.

Revision ID: 0003
Revises: 0002_deid
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from catalog.normalize import fold, name_key

revision = "0003"
down_revision = "0002_deid"  # re-chained after main gained 0002_deid
branch_labels = None
depends_on = None

_TRIGRAM_INDEXES = (
    ("ix_patient_name_ci_trgm", "patient", "patient_name_ci"),
    ("ix_patient_name_fuzzy_trgm", "patient", "patient_name_fuzzy"),
    ("ix_study_description_ci_trgm", "study", "study_description_ci"),
)


def upgrade() -> None:
    with op.batch_alter_table("patient") as batch:
        batch.add_column(sa.Column("patient_name_fuzzy", sa.String(1024), nullable=True))
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("study_description_ci", sa.String(1024), nullable=True))
        batch.add_column(
            sa.Column("referring_physician_name_fuzzy", sa.String(1024), nullable=True)
        )
        batch.create_index("ix_study_study_description_ci", ["study_description_ci"])
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("series_description_ci", sa.String(1024), nullable=True))
        batch.create_index("ix_series_series_description_ci", ["series_description_ci"])
    _backfill()
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and _has_trigram_extension(bind):
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, table, column in _TRIGRAM_INDEXES:
            op.execute(f"CREATE INDEX {name} ON {table} USING gin ({column} gin_trgm_ops)")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name, _, _ in _TRIGRAM_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")
    with op.batch_alter_table("series") as batch:
        batch.drop_index("ix_series_series_description_ci")
        batch.drop_column("series_description_ci")
    with op.batch_alter_table("study") as batch:
        batch.drop_index("ix_study_study_description_ci")
        batch.drop_column("referring_physician_name_fuzzy")
        batch.drop_column("study_description_ci")
    with op.batch_alter_table("patient") as batch:
        batch.drop_column("patient_name_fuzzy")


def _has_trigram_extension(bind: sa.Connection) -> bool:
    query = sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
    return bind.execute(query).first() is not None


def _backfill() -> None:
    """Compute the new columns (and the folded names, now accent-free) of existing rows."""
    bind = op.get_bind()
    patient = sa.table(
        "patient",
        sa.column("id"),
        sa.column("patient_name"),
        sa.column("patient_name_ci"),
        sa.column("patient_name_fuzzy"),
    )
    for pk, name in bind.execute(sa.select(patient.c.id, patient.c.patient_name)).all():
        bind.execute(
            patient.update()
            .where(patient.c.id == pk)
            .values(patient_name_ci=fold(name), patient_name_fuzzy=name_key(name))
        )
    study = sa.table(
        "study",
        sa.column("id"),
        sa.column("study_description"),
        sa.column("study_description_ci"),
        sa.column("referring_physician_name"),
        sa.column("referring_physician_name_ci"),
        sa.column("referring_physician_name_fuzzy"),
    )
    rows = bind.execute(
        sa.select(study.c.id, study.c.study_description, study.c.referring_physician_name)
    ).all()
    for pk, description, referring in rows:
        bind.execute(
            study.update()
            .where(study.c.id == pk)
            .values(
                study_description_ci=fold(description),
                referring_physician_name_ci=fold(referring),
                referring_physician_name_fuzzy=name_key(referring),
            )
        )
    series = sa.table(
        "series", sa.column("id"), sa.column("series_description"), sa.column("series_description_ci")
    )
    for pk, description in bind.execute(
        sa.select(series.c.id, series.c.series_description)
    ).all():
        bind.execute(
            series.update().where(series.c.id == pk).values(series_description_ci=fold(description))
        )
