"""delivery rows claimed by lease: lease_owner/lease_expires replace locked_by/locked_at;
``sent`` records the recipients delivered under the claim in progress

Revision ID: 0017_delivery_leases
Revises: 0018_spool_db
Create Date: 2026-12-03 05:20:00
"""
from alembic import op
import sqlalchemy as sa

from listserv.core.models import UTCDateTime

revision = '0017_delivery_leases'
down_revision = '0018_spool_db'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Claims of the old kind name a host and pid; the upgrade runs with serve stopped, so
    # every row still in ``sending`` goes back to the queue.
    op.execute("UPDATE delivery SET state = 'pending' WHERE state = 'sending'")
    with op.batch_alter_table('delivery') as batch:
        batch.drop_column('locked_by')
        batch.drop_column('locked_at')
        batch.add_column(sa.Column('lease_owner', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('lease_expires', UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('sent', sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE delivery SET state = 'pending' WHERE state = 'sending'")
    with op.batch_alter_table('delivery') as batch:
        batch.drop_column('sent')
        batch.drop_column('lease_expires')
        batch.drop_column('lease_owner')
        batch.add_column(sa.Column('locked_by', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('locked_at', UTCDateTime(timezone=True), nullable=True))
