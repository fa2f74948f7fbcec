"""audit trail: each event's outcome, and the patient and study it concerns

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outcome', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('patient_id', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('study_instance_uid', sa.String(length=64), server_default='', nullable=False))
        batch_op.create_index(batch_op.f('ix_audit_events_patient_id'), ['patient_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_patient_id'))
        batch_op.drop_column('study_instance_uid')
        batch_op.drop_column('patient_id')
        batch_op.drop_column('outcome')
