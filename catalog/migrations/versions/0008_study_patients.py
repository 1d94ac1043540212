"""study_patient: a study is found under every Patient ID its instances arrived with

Revision ID: 0008_patients
Revises: 0007_content
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_patients"
down_revision = "0007_content"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_patient",
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["patient_pk"], ["patient.id"]),
        sa.ForeignKeyConstraint(["study_pk"], ["study.id"]),
        sa.PrimaryKeyConstraint("study_pk", "patient_pk"),
    )
    with op.batch_alter_table("study_patient", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_study_patient_patient_pk"), ["patient_pk"], unique=False
        )
    # Every study has been found under the patient it was first stored under until now.
    op.execute(
        "INSERT INTO study_patient (study_pk, patient_pk) SELECT id, patient_pk FROM study"
    )


def downgrade() -> None:
    with op.batch_alter_table("study_patient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_patient_patient_pk"))
    op.drop_table("study_patient")
