"""predictions: cell found flag and domain (out-of-distribution) score

Revision ID: 0006_domain
Revises: 0002
Create Date: 2026-11-27 17:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0006_domain'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cell_found', sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column('ood_score', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.drop_column('ood_score')
        batch_op.drop_column('cell_found')
