"""Indexes for the managers' numbers (core/metrics.py).

Every metric selects by the moment something happened in a period, so each
such moment gets an index: first response (with its due time, which also
finds first responses overdue: ``first_response_at IS NULL AND
first_response_due_at < now``), first assignment, decisions on approvals, and
events by time (the backlog at a past moment replays the events since then).
Open resolution and next-reply breaches are found by due time, so counting
them does not scan the backlog.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:00:00
"""

from __future__ import annotations

from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_REQUEST_INDEXES = (
    ('ix_requests_first_response_at_due_at', ['first_response_at', 'first_response_due_at']),
    ('ix_requests_first_assigned_at', ['first_assigned_at']),
    ('ix_requests_status_resolution_due_at', ['status', 'resolution_due_at']),
    ('ix_requests_next_reply_due_at', ['next_reply_due_at']),
)


def upgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        for name, columns in _REQUEST_INDEXES:
            batch_op.create_index(name, columns, unique=False)

    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index('ix_approvals_decided_at', ['decided_at'], unique=False)

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_created_at', ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_created_at')

    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index('ix_approvals_decided_at')

    with op.batch_alter_table('requests', schema=None) as batch_op:
        for name, _columns in reversed(_REQUEST_INDEXES):
            batch_op.drop_index(name)
