"""occlusion-map tries kept in the database: attempts, the time of the next
try and the last error of each image's map, instead of in the daemon's memory

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('map_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('map_retry_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('map_error', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('map_error')
        batch_op.drop_column('map_retry_at')
        batch_op.drop_column('map_attempts')
