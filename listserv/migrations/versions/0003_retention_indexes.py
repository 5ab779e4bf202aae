"""retention: indexes for the spool sweep (spool_sha) and the foreign keys that pruning cascades

Revision ID: 0003_retention_indexes
Revises: 0002_digest_modes
Create Date: 2026-11-27 00:10:00
"""
from alembic import op


revision = '0003_retention_indexes'
down_revision = '0002_digest_modes'
branch_labels = None
depends_on = None

INDEXES = [
    ('inbound_message', 'spool_sha'),
    ('outbound_message', 'spool_sha'),
    ('archive_entry', 'spool_sha'),
    ('digest_entry', 'spool_sha'),
    ('held_message', 'inbound_id'),
    ('bounce_event', 'inbound_id'),
    ('pending_token', 'held_id'),
    ('moderation_log', 'held_id'),
    ('fanout', 'at'),
]


def upgrade() -> None:
    for table, column in INDEXES:
        op.create_index(f'ix_{table}_{column}', table, [column], unique=False)


def downgrade() -> None:
    for table, column in reversed(INDEXES):
        op.drop_index(f'ix_{table}_{column}', table_name=table)
