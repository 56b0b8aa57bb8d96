"""images: red-cell diameter measured in each field ("fields" jobs)

Revision ID: 0008_field_red_cells
Revises: 0007_field_ood
Create Date: 2026-11-28 03:40:00

A field job's red cells say whether its images were taken at the configured
magnification (``pipeline.fields.magnification_reason``): each field keeps
its measured red-cell diameter in pixels. Nullable: fields stored before,
cell images, and fields where too few red cells were seen have none.
"""

from alembic import op
import sqlalchemy as sa


revision = '0008_field_red_cells'
down_revision = '0007_field_ood'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('red_cell_px', sa.Float(), nullable=True))


def downgrade() -> None:
    # never recreate the table: on SQLite a batch "move and copy" drops `images`, and with foreign keys on
    # that deletes every prediction and cell of every job (ON DELETE CASCADE); SQLite >= 3.35 drops a column in place
    with op.batch_alter_table('images', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('red_cell_px')
