"""The e-mail gateway: raw inbound mail, reply tokens, what the parser learnt.

``inbound_mail`` holds every accepted message byte for byte, committed before
the SMTP ``250`` and filed afterwards. Requests get an unguessable reply
token (existing ones too, so replies to mail sent before the upgrade still
thread); messages keep the full text beside the stripped reply, the sender
authentication verdict and the gateway's flags; attachments their
Content-ID. ``address_health`` remembers addresses our mail bounced from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 19:00:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'inbound_mail',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(length=8), nullable=False),
        sa.Column('envelope_from', sa.Text(), nullable=True),
        sa.Column('recipients', sa.Text(), nullable=False),
        sa.Column('peer', sa.String(length=255), nullable=True),
        sa.Column('helo', sa.String(length=255), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', sa.String(length=12), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('outcome', sa.String(length=12), nullable=True),
        sa.Column('matched_by', sa.String(length=16), nullable=True),
        sa.Column('reason', sa.String(length=32), nullable=True),
        sa.Column('request_id', sa.Integer(), nullable=True),
        sa.Column('message_row_id', sa.Integer(), nullable=True),
        sa.Column('message_id', sa.String(length=998), nullable=True),
        sa.Column('from_address', sa.String(length=320), nullable=True),
        sa.Column('subject', sa.String(length=998), nullable=True),
        sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('released_by', sa.String(length=64), nullable=True),
        sa.CheckConstraint("status IN ('received', 'processed', 'quarantined')", name=op.f('ck_inbound_mail_status')),
        sa.CheckConstraint("source IN ('smtp', 'ingest')", name=op.f('ck_inbound_mail_source')),
        sa.ForeignKeyConstraint(['request_id'], ['requests.id'], name=op.f('fk_inbound_mail_request_id_requests')),
        sa.ForeignKeyConstraint(['message_row_id'], ['messages.id'],
                                name=op.f('fk_inbound_mail_message_row_id_messages')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_mail')),
        sa.UniqueConstraint('sha256', name=op.f('uq_inbound_mail_sha256')),
    )
    with op.batch_alter_table('inbound_mail', schema=None) as batch_op:
        batch_op.create_index('ix_inbound_mail_status_id', ['status', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_mail_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_mail_message_id'), ['message_id'], unique=False)

    op.create_table(
        'address_health',
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('failing', sa.Boolean(), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('first_failed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_failed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_reason', sa.Text(), nullable=True),
        sa.Column('cleared_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('address', name=op.f('pk_address_health')),
    )

    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reply_token', sa.String(length=32), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_requests_reply_token'), ['reply_token'])
    requests = sa.table('requests', sa.column('id', sa.Integer), sa.column('reply_token', sa.String))
    connection = op.get_bind()
    for (request_id,) in connection.execute(sa.select(requests.c.id)).all():
        connection.execute(
            requests.update().where(requests.c.id == request_id).values(reply_token=secrets.token_hex(8))
        )

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('full_text', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('auth_verdict', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('auth_summary', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('flags', sa.String(length=500), nullable=True))

    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_id', sa.String(length=998), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.drop_column('content_id')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        for name in ('flags', 'auth_summary', 'auth_verdict', 'full_text'):
            batch_op.drop_column(name)
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_requests_reply_token'), type_='unique')
        batch_op.drop_column('reply_token')
    op.drop_table('address_health')
    with op.batch_alter_table('inbound_mail', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_mail_message_id'))
        batch_op.drop_index(batch_op.f('ix_inbound_mail_request_id'))
        batch_op.drop_index('ix_inbound_mail_status_id')
    op.drop_table('inbound_mail')
