"""batch leases, reaper lock, error codes, job owner

Revision ID: 0003_reliability
Revises: 0005_reviews
Create Date: 2026-11-27 17:30:00
"""

from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


revision = '0003_reliability'
down_revision = '0005_reviews'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('batches',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_batches_job_status', 'batches', ['job_id', 'status'], unique=False)
    locks = op.create_table('locks',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=True),
    sa.Column('until', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.bulk_insert(locks, [{'name': 'reaper', 'holder': None, 'until': datetime(2000, 1, 1, tzinfo=timezone.utc)}])
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('error_code', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('batch_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_images_batch_id', ['batch_id'], unique=False)
        batch_op.create_foreign_key('fk_images_batch_id', 'batches', ['batch_id'], ['id'], ondelete='SET NULL')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('error_code', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('owner', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_jobs_owner', ['owner'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_owner')
        batch_op.drop_column('owner')
        batch_op.drop_column('error_code')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_constraint('fk_images_batch_id', type_='foreignkey')
        batch_op.drop_index('ix_images_batch_id')
        batch_op.drop_column('batch_id')
        batch_op.drop_column('error_code')
    op.drop_table('locks')
    op.drop_index('ix_batches_job_status', table_name='batches')
    op.drop_table('batches')
