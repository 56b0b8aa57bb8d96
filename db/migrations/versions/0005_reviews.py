"""reviews and sign-offs

Revision ID: 0005_reviews
Revises: 0006_domain
Create Date: 2026-11-27 17:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005_reviews'
down_revision = '0006_domain'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reviews',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('cell_idx', sa.Integer(), nullable=True),
    sa.Column('old_label', sa.String(length=32), nullable=False),
    sa.Column('new_label', sa.String(length=32), nullable=False),
    sa.Column('reviewer', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_reviews_job_target', 'reviews', ['job_id', 'image_id', 'cell_idx'], unique=False)
    op.create_table('signoffs',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('reviewer', sa.String(length=128), nullable=False),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id')
    )


def downgrade() -> None:
    op.drop_table('signoffs')
    op.drop_index('ix_reviews_job_target', table_name='reviews')
    op.drop_table('reviews')
