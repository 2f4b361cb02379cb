"""label_corrections: people's verdicts on labels (append-only)

Revision ID: 5e7a1c3d9f20
Revises: 8c1f4e2a9b37
Create Date: 2026-11-29 19:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '5e7a1c3d9f20'
down_revision = '8c1f4e2a9b37'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'label_corrections',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('image_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('label', sa.String(length=255), nullable=False),
        sa.Column('verdict', sa.String(length=16), nullable=False),
        sa.Column('user', sa.String(length=255), nullable=False),
        sa.Column('model_version_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'),
                  nullable=False),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_label_corrections_image_id_images'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'],
                                name=op.f('fk_label_corrections_model_version_id_model_versions'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_label_corrections')),
    )
    op.create_index('ix_label_corrections_image_label', 'label_corrections', ['image_id', 'label', 'id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_label_corrections_image_label', table_name='label_corrections')
    op.drop_table('label_corrections')
