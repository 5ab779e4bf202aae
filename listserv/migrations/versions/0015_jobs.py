"""the job table: one engine for background work (listserv.jobs)

Revision ID: 0015_jobs
Revises: 0014_digest_crosspost
Create Date: 2026-12-02 22:30:00
"""
from alembic import op
import sqlalchemy as sa

from listserv.core.models import UTCDateTime

revision = '0015_jobs'
down_revision = '0014_digest_crosspost'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=64), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('partition_key', sa.String(length=200), nullable=True),
        sa.Column('dedupe_key', sa.String(length=200), nullable=True),
        sa.Column('state', sa.Enum('ready', 'running', 'dead', name='jobstate',
                                   native_enum=False, create_constraint=False, length=32),
                  nullable=False),
        sa.Column('run_after', UTCDateTime(timezone=True), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('max_attempts', sa.Integer(), nullable=False),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_expires', UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('failed_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_job_due', 'job', ['state', 'run_after'])
    op.create_index('ix_job_partition', 'job', ['partition_key', 'id'])
    op.create_index('uq_job_dedupe_ready', 'job', ['dedupe_key'], unique=True,
                    sqlite_where=sa.text("state = 'ready'"),
                    postgresql_where=sa.text("state = 'ready'"))


def downgrade() -> None:
    op.drop_index('uq_job_dedupe_ready', table_name='job')
    op.drop_index('ix_job_partition', table_name='job')
    op.drop_index('ix_job_due', table_name='job')
    op.drop_table('job')
