"""archive search: archive_message (one row per archived post) and its full-text index

Revision ID: 0009_archive_search
Revises: 0010_list_networks
Create Date: 2026-12-02 18:40:00

The full-text index is engine-specific and has no model (listserv.core.models.FULLTEXT_OBJECTS):
SQLite gets an FTS5 table with the archive_message rows as external content, kept in step by
triggers; PostgreSQL a generated tsvector column (subject weighted A, sender B, body D) with a
GIN index. Both tokenise without stemming ('simple', unicode61), as lists speak many languages.
"""
from alembic import op
import sqlalchemy as sa


revision = '0009_archive_search'
down_revision = '0010_list_networks'
branch_labels = None
depends_on = None

_FTS_COLUMNS = "subject, sender_name, sender_address, body"

_SQLITE = [
    f"""CREATE VIRTUAL TABLE archive_message_fts USING fts5(
        {_FTS_COLUMNS}, content='archive_message', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2')""",
    f"""CREATE TRIGGER archive_message_fts_insert AFTER INSERT ON archive_message BEGIN
        INSERT INTO archive_message_fts(rowid, {_FTS_COLUMNS})
        VALUES (new.id, new.subject, new.sender_name, new.sender_address, new.body);
    END""",
    f"""CREATE TRIGGER archive_message_fts_delete AFTER DELETE ON archive_message BEGIN
        INSERT INTO archive_message_fts(archive_message_fts, rowid, {_FTS_COLUMNS})
        VALUES ('delete', old.id, old.subject, old.sender_name, old.sender_address, old.body);
    END""",
    f"""CREATE TRIGGER archive_message_fts_update AFTER UPDATE ON archive_message BEGIN
        INSERT INTO archive_message_fts(archive_message_fts, rowid, {_FTS_COLUMNS})
        VALUES ('delete', old.id, old.subject, old.sender_name, old.sender_address, old.body);
        INSERT INTO archive_message_fts(rowid, {_FTS_COLUMNS})
        VALUES (new.id, new.subject, new.sender_name, new.sender_address, new.body);
    END""",
]

_POSTGRESQL = [
    """ALTER TABLE archive_message ADD COLUMN fts tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple', subject), 'A')
        || setweight(to_tsvector('simple', sender_name || ' ' || sender_address || ' '
                                 || translate(sender_address, '@.', '  ')), 'B')
        || setweight(to_tsvector('simple', body), 'D')) STORED""",
    "CREATE INDEX ix_archive_message_fts ON archive_message USING gin (fts)",
]


def upgrade() -> None:
    op.create_table(
        'archive_message',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('list_id', sa.Integer(), nullable=False),
        sa.Column('message_id', sa.String(length=998), nullable=False),
        sa.Column('month', sa.String(length=7), nullable=False),
        sa.Column('mbox_offset', sa.BigInteger(), nullable=False),
        sa.Column('mbox_length', sa.Integer(), nullable=False),
        sa.Column('archived_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('sender_name', sa.String(length=255), nullable=False),
        sa.Column('sender_address', sa.String(length=320), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('parent_id', sa.String(length=998), nullable=True),
        sa.Column('thread_id', sa.String(length=998), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('attachments', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['list_id'], ['mailing_list.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('list_id', 'message_id'),
    )
    op.create_index('ix_archive_message_month', 'archive_message',
                    ['list_id', 'month', 'archived_at'])
    op.create_index('ix_archive_message_date', 'archive_message', ['list_id', 'archived_at'])
    op.create_index('ix_archive_message_thread', 'archive_message',
                    ['list_id', 'thread_id', 'archived_at'])
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE if dialect == 'sqlite' else _POSTGRESQL:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        for trigger in ('insert', 'delete', 'update'):
            op.execute(f"DROP TRIGGER IF EXISTS archive_message_fts_{trigger}")
        op.execute("DROP TABLE IF EXISTS archive_message_fts")
    op.drop_index('ix_archive_message_thread', table_name='archive_message')
    op.drop_index('ix_archive_message_date', table_name='archive_message')
    op.drop_index('ix_archive_message_month', table_name='archive_message')
    op.drop_table('archive_message')
