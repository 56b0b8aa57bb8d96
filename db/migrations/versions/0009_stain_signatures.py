"""predictions and cells: red-cell stain signature of each image and field cell

Revision ID: 0009_stain_signatures
Revises: 0008_field_red_cells
Create Date: 2026-11-28 19:55:00

The job's stain check (``pipeline.stain_check``) compares the red cells'
colour with the training laboratories'. The signature is measured on each
image's (and each field cell's) model crop while the worker prepares it, and
the report is built from the stored rows when the job finishes, so every
prediction and every field cell keeps its signature: the median red-cell
optical density [R, G, B], as JSON. Nullable: rows stored before, and crops
that show too few red cells to measure, have none.
"""

from alembic import op
import sqlalchemy as sa


revision = '0009_stain_signatures'
down_revision = '0008_field_red_cells'
branch_labels = None
depends_on = None

TABLES = ('predictions', 'cells')


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('stain_od', sa.JSON(), nullable=True))


def downgrade() -> None:
    # never recreate the tables (as 0008): on SQLite a batch "move and copy" rewrites every prediction and cell of
    # every job, and with foreign keys on it would empty whatever references them with ON DELETE CASCADE;
    # SQLite >= 3.35 drops a column in place
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None, recreate='never') as batch_op:
            batch_op.drop_column('stain_od')
