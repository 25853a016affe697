"""Delivering the outbox: notifications the core queued, sent through the channels it does not know.

``core`` decides *that* a customer is to be told something (an outbox row,
written in the same transaction as its cause); this package decides *how*:
it renders the mail from templates and hands it to a relay or a Maildir.
It imports ``core`` and never ``intake``, ``bot`` or ``cli``.
"""
