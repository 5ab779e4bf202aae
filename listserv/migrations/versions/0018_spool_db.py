"""message bytes in the database (spool_blob); incoming mail is processed by jobs: the inbound
claim columns go and waiting mail gets its job

Revision ID: 0018_spool_db
Revises: 0019_archive_db
Create Date: 2026-12-03 05:30:00
"""
import datetime as dt

from alembic import op
import sqlalchemy as sa

from listserv.core.models import UTCDateTime

revision = '0018_spool_db'
down_revision = '0019_archive_db'
branch_labels = None
depends_on = None

JOB_ATTEMPTS = 6     # listserv.pipeline.inbound.JOB_ATTEMPTS when this revision was written


def upgrade() -> None:
    # The spool directory's files are imported by `listserv db upgrade` (listserv.spool).
    op.create_table(
        'spool_blob',
        sa.Column('sha', sa.String(length=64), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('stored_at', UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('sha'),
    )
    conn = op.get_bind()
    inbound = sa.table('inbound_message', sa.column('id', sa.Integer),
                       sa.column('list_id', sa.Integer), sa.column('subaddress', sa.String),
                       sa.column('state', sa.String))
    job = sa.table('job', sa.column('kind', sa.String), sa.column('payload', sa.JSON),
                   sa.column('partition_key', sa.String), sa.column('state', sa.String),
                   sa.column('run_after', UTCDateTime(timezone=True)),
                   sa.column('attempts', sa.Integer), sa.column('max_attempts', sa.Integer),
                   sa.column('created_at', UTCDateTime(timezone=True)))
    # Mail accepted but not processed yet (or claimed by a worker of the old version) gets
    # the job that processes it now, in arrival order.
    waiting = conn.execute(sa.select(inbound.c.id, inbound.c.list_id, inbound.c.subaddress)
                           .where(inbound.c.state.in_(['new', 'processing']))
                           .order_by(inbound.c.id)).all()
    conn.execute(sa.update(inbound).where(inbound.c.state == 'processing')
                 .values(state='new'))
    now = dt.datetime.now(dt.timezone.utc)
    rows = [{'kind': 'incoming', 'payload': {'inbound_id': r.id},
             'partition_key': (f'incoming:{r.list_id}:bounces' if r.subaddress == 'bounces'
                               else f'incoming:{r.list_id}'),
             'state': 'ready', 'run_after': now, 'attempts': 0,
             'max_attempts': JOB_ATTEMPTS, 'created_at': now} for r in waiting]
    if rows:
        op.bulk_insert(job, rows)
    with op.batch_alter_table('inbound_message') as batch:
        batch.drop_column('locked_by')
        batch.drop_column('locked_at')


def downgrade() -> None:
    with op.batch_alter_table('inbound_message') as batch:
        batch.add_column(sa.Column('locked_by', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('locked_at', UTCDateTime(timezone=True), nullable=True))
    op.execute("DELETE FROM job WHERE kind = 'incoming'")
    op.drop_table('spool_blob')
