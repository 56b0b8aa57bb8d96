"""progress counters on jobs

Revision ID: 0004_progress_counters
Revises: 0003_reliability
Create Date: 2026-11-27 17:30:00

Jobs get ``images_done`` and ``images_failed`` counters, moved per batch by
the workers, so status, the jobs list and finalisation no longer count image
rows. Existing jobs are backfilled from their image rows.
"""

from alembic import op
import sqlalchemy as sa


revision = '0004_progress_counters'
down_revision = '0003_reliability'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('images_done', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('images_failed', sa.Integer(), nullable=False, server_default='0'))
    op.execute(
        "UPDATE jobs SET "
        "images_done = (SELECT count(*) FROM images WHERE images.job_id = jobs.id AND images.status = 'done'), "
        "images_failed = (SELECT count(*) FROM images WHERE images.job_id = jobs.id AND images.status = 'failed')"
    )


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('images_failed')
        batch_op.drop_column('images_done')
