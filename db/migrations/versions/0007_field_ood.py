"""cells: domain (out-of-distribution) score of each white cell found in a field

Revision ID: 0007_field_ood
Revises: 0004_progress_counters
Create Date: 2026-11-27 20:30:00

Field jobs get the same domain check as cell jobs, so each cell cut from a
field keeps its distance to the training data, as a prediction row does.
Nullable: cells stored before, or scored by a model without a domain model,
have none.
"""

from alembic import op
import sqlalchemy as sa


revision = '0007_field_ood'
down_revision = '0004_progress_counters'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cells', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ood_score', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cells', schema=None) as batch_op:
        batch_op.drop_column('ood_score')
