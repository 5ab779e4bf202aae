"""digest mode tracking: membership.digest_from_seq and final_digest

Revision ID: 0002_digest_modes
Revises: 0001
Create Date: 2026-11-26 23:15:00
"""
from alembic import op
import sqlalchemy as sa
import listserv.core.models


revision = '0002_digest_modes'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('membership', schema=None) as batch_op:
        batch_op.add_column(sa.Column('digest_from_seq', sa.Integer(), server_default='0',
                                      nullable=False))
    op.create_table('final_digest',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('list_id', sa.Integer(), nullable=False),
    sa.Column('membership_id', sa.Integer(), nullable=False),
    sa.Column('mode', sa.Enum('regular', 'mime-digest', 'plain-digest', 'nomail', name='deliverymode', native_enum=False, length=32), nullable=False),
    sa.Column('from_seq', sa.Integer(), nullable=False),
    sa.Column('to_seq', sa.Integer(), nullable=False),
    sa.Column('created_at', listserv.core.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['mailing_list.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['membership_id'], ['membership.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('final_digest', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_final_digest_list_id'), ['list_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_final_digest_membership_id'), ['membership_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('final_digest', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_final_digest_membership_id'))
        batch_op.drop_index(batch_op.f('ix_final_digest_list_id'))
    op.drop_table('final_digest')
    with op.batch_alter_table('membership', schema=None) as batch_op:
        batch_op.drop_column('digest_from_seq')
