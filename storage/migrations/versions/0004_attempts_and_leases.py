"""attempts and leases for background work; study revisions; report versions;
the patient's name, birth date and sex as each study's images carry them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(), nullable=True))
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('revision', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('report_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('report_error', sa.Text(), server_default='', nullable=False))
        batch_op.add_column(sa.Column('retry_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('patient_name', sa.String(length=324), server_default='', nullable=False))
        batch_op.add_column(sa.Column('patient_birth_date', sa.String(length=8), server_default='', nullable=False))
        batch_op.add_column(sa.Column('patient_sex', sa.String(length=16), server_default='', nullable=False))
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(), nullable=True))
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('supersedes_fk', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_reports_supersedes', 'reports', ['supersedes_fk'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_constraint('fk_reports_supersedes', type_='foreignkey')
        batch_op.drop_column('supersedes_fk')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('patient_sex')
        batch_op.drop_column('patient_birth_date')
        batch_op.drop_column('patient_name')
        batch_op.drop_column('retry_at')
        batch_op.drop_column('report_error')
        batch_op.drop_column('report_attempts')
        batch_op.drop_column('revision')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
        batch_op.drop_column('attempts')
