"""training runs: the process (pid, host) and a heartbeat, so a killed run can be told from a running one

Revision ID: b7d2e9c4a615
Revises: b7d3c9a1e042
Create Date: 2026-11-29 23:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = 'b7d2e9c4a615'
down_revision = 'b7d3c9a1e042'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('host', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('host')
        batch_op.drop_column('pid')
