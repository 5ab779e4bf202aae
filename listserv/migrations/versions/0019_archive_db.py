"""archive bytes in the database (archive_raw); archive_entry is a plain to-do list

Revision ID: 0019_archive_db
Revises: 0016_fanout
Create Date: 2026-12-03 05:30:00

archive_entry rows already written to the mbox are deleted (the archive job now deletes each
entry as it archives it), with their claim column appended_at. archive_message loses the mbox
position of its entry: its bytes go to archive_raw. Messages archived before this revision
have no bytes in the database until ``listserv archive reindex --from-mbox`` reads them from
the old mbox files (README: upgrading).
"""
from alembic import op
import sqlalchemy as sa

revision = '0019_archive_db'
down_revision = '0016_fanout'
branch_labels = None
depends_on = None


def _drop_column(table: str, column: str) -> None:
    if op.get_bind().dialect.name == 'sqlite':
        # Natively (SQLite >= 3.35): a batch copy of archive_message would drop its
        # full-text triggers.
        op.execute(f'ALTER TABLE {table} DROP COLUMN {column}')
    else:
        op.drop_column(table, column)


def upgrade() -> None:
    op.create_table(
        'archive_raw',
        sa.Column('message_pk', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['message_pk'], ['archive_message.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('message_pk'),
    )
    op.execute('DELETE FROM archive_entry WHERE appended_at IS NOT NULL')
    op.drop_index('ix_archive_pending', table_name='archive_entry')
    _drop_column('archive_entry', 'appended_at')
    op.create_index('ix_archive_entry_list', 'archive_entry', ['list_id', 'id'])
    _drop_column('archive_message', 'mbox_offset')
    _drop_column('archive_message', 'mbox_length')


def downgrade() -> None:
    op.add_column('archive_message', sa.Column('mbox_offset', sa.BigInteger(), nullable=False,
                                               server_default='0'))
    op.add_column('archive_message', sa.Column('mbox_length', sa.Integer(), nullable=False,
                                               server_default='0'))
    op.drop_index('ix_archive_entry_list', table_name='archive_entry')
    op.add_column('archive_entry', sa.Column('appended_at', sa.DateTime(timezone=True),
                                             nullable=True))
    op.create_index('ix_archive_pending', 'archive_entry', ['appended_at'])
    op.drop_table('archive_raw')
