"""SLA clocks: due times on requests, the sweep's index, the record of crossings,
and an index for counting events of a kind in a period.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 16:47:46.550688
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sla_crossings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('target', sa.String(length=16), nullable=False),
    sa.Column('threshold', sa.String(length=8), nullable=False),
    sa.Column('cycle_started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('crossed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("target IN ('first_response', 'next_reply', 'resolution')", name=op.f('ck_sla_crossings_target')),
    sa.CheckConstraint("threshold IN ('warning', 'breach')", name=op.f('ck_sla_crossings_threshold')),
    sa.ForeignKeyConstraint(['request_id'], ['requests.id'], name=op.f('fk_sla_crossings_request_id_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sla_crossings')),
    sa.UniqueConstraint('request_id', 'target', 'threshold', 'cycle_started_at', name='uq_sla_crossings_once')
    )
    with op.batch_alter_table('sla_crossings', schema=None) as batch_op:
        batch_op.create_index('ix_sla_crossings_recorded_at', ['recorded_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sla_crossings_request_id'), ['request_id'], unique=False)

    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sla_policy', sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column('first_response_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('next_reply_started_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('next_reply_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('resolution_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('first_response_business_seconds', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('resolution_business_seconds', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('sla_next_check_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_requests_sla_next_check_at'), ['sla_next_check_at'], unique=False)

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_kind_created_at', ['kind', 'created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_kind_created_at')

    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_requests_sla_next_check_at'))
        batch_op.drop_column('sla_next_check_at')
        batch_op.drop_column('resolution_business_seconds')
        batch_op.drop_column('first_response_business_seconds')
        batch_op.drop_column('resolution_due_at')
        batch_op.drop_column('next_reply_due_at')
        batch_op.drop_column('next_reply_started_at')
        batch_op.drop_column('first_response_due_at')
        batch_op.drop_column('sla_policy')

    with op.batch_alter_table('sla_crossings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sla_crossings_request_id'))
        batch_op.drop_index('ix_sla_crossings_recorded_at')

    op.drop_table('sla_crossings')
