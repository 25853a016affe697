"""The Slack app: where cards were posted, and which events were handled.

``slack_cards`` remembers the channel and timestamp of each request's triage
card and each approval's card, so changes update them in place; a request
has at most one triage card (a partial unique index), an approval one card.
``slack_events`` records every Events API ``event_id`` handled, so a retried
delivery, on this instance or another, is processed once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 17:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'slack_cards',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('request_id', sa.Integer(), nullable=True),
        sa.Column('approval_id', sa.Integer(), nullable=True),
        sa.Column('channel', sa.String(length=32), nullable=False),
        sa.Column('ts', sa.String(length=32), nullable=False),
        sa.Column('posted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('request', 'approval')", name=op.f('ck_slack_cards_kind')),
        sa.CheckConstraint(
            "(kind = 'request' AND request_id IS NOT NULL AND approval_id IS NULL)"
            " OR (kind = 'approval' AND approval_id IS NOT NULL)",
            name=op.f('ck_slack_cards_subject'),
        ),
        sa.ForeignKeyConstraint(['approval_id'], ['approvals.id'], name=op.f('fk_slack_cards_approval_id_approvals')),
        sa.ForeignKeyConstraint(['request_id'], ['requests.id'], name=op.f('fk_slack_cards_request_id_requests')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_slack_cards')),
        sa.UniqueConstraint('approval_id', name=op.f('uq_slack_cards_approval_id')),
    )
    op.create_index(op.f('ix_slack_cards_request_id'), 'slack_cards', ['request_id'], unique=False)
    op.create_index(
        'uq_slack_cards_request_card', 'slack_cards', ['request_id'], unique=True,
        sqlite_where=sa.text("kind = 'request'"), postgresql_where=sa.text("kind = 'request'"),
    )
    op.create_table(
        'slack_events',
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('event_id', name=op.f('pk_slack_events')),
    )
    op.create_index(op.f('ix_slack_events_received_at'), 'slack_events', ['received_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_slack_events_received_at'), table_name='slack_events')
    op.drop_table('slack_events')
    op.drop_index('uq_slack_cards_request_card', table_name='slack_cards')
    op.drop_index(op.f('ix_slack_cards_request_id'), table_name='slack_cards')
    op.drop_table('slack_cards')
