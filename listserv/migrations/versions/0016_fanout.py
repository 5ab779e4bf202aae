"""staged fan-out: fanout rows carry the fan-out job's cursor (listserv.fanout)

Revision ID: 0016_fanout
Revises: 0015_jobs
Create Date: 2026-12-03 05:20:00
"""
from alembic import op
import sqlalchemy as sa

from listserv.core.models import UTCDateTime

revision = '0016_fanout'
down_revision = '0015_jobs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('fanout') as batch:
        batch.add_column(sa.Column('outbound_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('members_upto', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('after_address_id', sa.Integer(), nullable=False,
                                   server_default='0'))
        batch.add_column(sa.Column('queued', sa.Integer(), nullable=False,
                                   server_default='0'))
        batch.add_column(sa.Column('expanded_at', UTCDateTime(timezone=True), nullable=True))
        batch.create_foreign_key('fk_fanout_outbound_id_outbound_message', 'outbound_message',
                                 ['outbound_id'], ['id'], ondelete='SET NULL')
    # fan-outs made before this revision were expanded when their post was accepted
    op.execute("UPDATE fanout SET expanded_at = at")


def downgrade() -> None:
    with op.batch_alter_table('fanout') as batch:
        batch.drop_constraint('fk_fanout_outbound_id_outbound_message', type_='foreignkey')
        batch.drop_column('expanded_at')
        batch.drop_column('queued')
        batch.drop_column('after_address_id')
        batch.drop_column('members_upto')
        batch.drop_column('outbound_id')
