"""indexes for a post's predicted tags by name and the browser's newest-post-first page

Revision ID: 8c1f4e2a9b37
Revises: 37ad776cf0f9
Create Date: 2026-11-29 18:00:00.000000
"""
from alembic import op

revision = '8c1f4e2a9b37'
down_revision = '37ad776cf0f9'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.create_index('ix_posts_post', ['post'], unique=False)
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index('ix_images_taken_at', ['taken_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index('ix_images_taken_at')
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.drop_index('ix_posts_post')
