"""predictions: the red cells' diameter in each cell image's own pixels

Revision ID: 0010_red_cell_size
Revises: 0009_stain_signatures
Create Date: 2026-11-28 22:50:00

The red-cell check of model 2.3.2 (``pipeline.stain_check.red_cell_signature``)
compares each cell image's red-cell stain *and size* with the training
laboratories': the crop is rescaled by the red cells, so another
magnification or camera resolution leaves the network's features near home,
and only the diameter in the image's own pixels shows it. The report is built
from the stored rows when the job finishes, so every prediction keeps the
diameter its crop measured. Nullable: rows stored before, and images whose
crop found no red-cell ruler, have none. Field cells are not included: field
jobs keep their own magnification check on the field's red cells
(``images.red_cell_px``, 0008).
"""

from alembic import op
import sqlalchemy as sa


revision = '0010_red_cell_size'
down_revision = '0009_stain_signatures'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('predictions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('red_cell_px', sa.Float(), nullable=True))


def downgrade() -> None:
    # never recreate the table (see 0009): SQLite >= 3.35 drops a column in place
    with op.batch_alter_table('predictions', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('red_cell_px')
