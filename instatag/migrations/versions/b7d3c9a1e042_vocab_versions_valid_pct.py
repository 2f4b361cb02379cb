"""vocab_versions.valid_pct: the validation share, stored with the vocabulary version

The share of images in the validation split (``labels.is_valid``) was a training parameter
(``TrainConfig.valid_pct``, recorded in ``model_versions.params``) with its default written in four
modules; it is now a fact of the vocabulary version, read by training, evaluation, the report and
the drops. Existing versions get the share their models were trained with when those agree (a
version whose models used several keeps the newest model's, and the migration says so), else the
share every split used before this column: 0.2.

Thresholds need no column: the evaluation always stored them in the database (``label_metrics.
threshold``, ``model_versions.metrics["global_threshold"]``) in the same transaction as the rest,
and those are now the only ones read (``instatag.registry``); a model.json's copy is ignored.

Revision ID: b7d3c9a1e042
Revises: f1ea2748b424
Create Date: 2026-11-29 21:45:00
"""
import logging

import sqlalchemy as sa
from alembic import op

revision = 'b7d3c9a1e042'
down_revision = 'f1ea2748b424'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

#: the share every split used before this revision (TrainConfig's and evaluate's default then)
BEFORE = 0.2


def upgrade() -> None:
    # ADD COLUMN, not a batch rebuild: on SQLite, rebuilding vocab_versions would cascade-delete
    # vocab_labels and image_labels (ON DELETE CASCADE), as posts' rebuild did post_hashtags.
    op.add_column('vocab_versions', sa.Column('valid_pct', sa.Float(), nullable=False,
                                              server_default=sa.text(repr(BEFORE))))
    conn = op.get_bind()
    models = sa.table('model_versions', sa.column('id', sa.Integer), sa.column('vocab_version_id', sa.Integer),
                      sa.column('params', sa.JSON))
    vocab = sa.table('vocab_versions', sa.column('id', sa.Integer), sa.column('valid_pct', sa.Float))
    shares: dict[int, list[float]] = {}
    for row in conn.execute(sa.select(models.c.vocab_version_id, models.c.params).order_by(models.c.id)):
        pct = (row.params or {}).get('valid_pct')
        if isinstance(pct, int | float) and 0 < pct < 1:
            shares.setdefault(row.vocab_version_id, []).append(float(pct))
    for vocab_id, values in shares.items():
        if len(set(values)) > 1:
            log.warning("vocabulary version %s: its models were trained with validation shares %s; keeping the "
                        "newest model's, %s", vocab_id, sorted(set(values)), values[-1])
        if values[-1] != BEFORE:
            conn.execute(sa.update(vocab).where(vocab.c.id == vocab_id).values(valid_pct=values[-1]))
    if conn.dialect.name == 'postgresql':  # new rows always state it (vocab.build_vocab); SQLite cannot drop it
        op.alter_column('vocab_versions', 'valid_pct', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('vocab_versions') as batch_op:
        batch_op.drop_column('valid_pct')
