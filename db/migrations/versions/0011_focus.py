"""predictions and cells: the blur effect of each model crop

Revision ID: 0011_focus
Revises: 0010_red_cell_size
Create Date: 2026-11-29 10:00:00

The focus check of model 2.4.2 (``pipeline.focus_check``) compares the job's
images' blur effect with the training laboratories'. The report is built from
the stored rows when the job finishes, so every prediction (cell images) and
every cell found in a field keeps the value its crop measured. Nullable: rows
stored before, and models without a focus reference, have none.
"""

from alembic import op
import sqlalchemy as sa


revision = '0011_focus'
down_revision = '0010_red_cell_size'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('focus', sa.Float(), nullable=True))
    with op.batch_alter_table('cells', schema=None) as batch_op:
        batch_op.add_column(sa.Column('focus', sa.Float(), nullable=True))


def downgrade() -> None:
    # never recreate the tables (see 0009): SQLite >= 3.35 drops a column in place
    with op.batch_alter_table('cells', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('focus')
    with op.batch_alter_table('predictions', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('focus')
