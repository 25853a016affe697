"""The e-mail copy of a digest: its text as the body, its chart attached. Pure.

A copy goes to each address in ``SUPPORTDESK_DIGEST_EMAILS`` (one outbox row
per address, queued by the ``digest.made`` or ``digest.resent`` event). It is
mail nobody typed, so it carries the same automatic markers and loop header
as an acknowledgment (``mail_render.mark_automatic``); it belongs to no
request, so it has no reply token, no ``Reply-To`` and no threading headers.
Its Message-ID is fixed by the outbox row, so a retried send is recognisably
the same mail and a re-sent digest a different one.
"""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart

from core.services.digests import DigestView
from core.settings import Settings
from notifications.mail_render import (
    POLICY,
    RenderError,
    check_headers,
    envelope_problem,
    header_text,
    mark_automatic,
    message_id,
    plain_text,
    set_body,
)

TOPIC = "digest"
CHART_FILENAME = "trend.png"
SENDER_NAME = "Support"


def build_digest_message(digest: DigestView, to: str, settings: Settings, outbox_id: int,
                         now: datetime) -> EmailMessage:
    """The complete copy of ``digest`` for ``to``, sent by the outbox row ``outbox_id`` at ``now``."""
    problem = envelope_problem(to)
    if problem is not None:
        raise RenderError(f"invalid recipient: {problem}")
    message = EmailMessage(policy=POLICY)
    message["From"] = Address(display_name=SENDER_NAME, addr_spec=settings.support_addresses[0])
    message["To"] = to
    message["Subject"] = header_text(digest.email_subject)
    message["Date"] = now
    message["Message-ID"] = digest_message_id(digest.id, outbox_id, settings.mail_domain)
    mark_automatic(message, TOPIC, settings.mail_domain)
    set_body(message, plain_text(digest.email_text))
    message.make_mixed()
    message.attach(_chart_part(digest.chart_png))
    check_headers(message)
    return message


def _chart_part(png: bytes) -> MIMEPart:
    # A MIMEPart, not add_attachment(): that makes the part an EmailMessage,
    # which gives it a MIME-Version header of its own.
    part = MIMEPart(policy=POLICY)
    part.set_content(png, maintype="image", subtype="png", disposition="attachment", filename=CHART_FILENAME)
    return part


def digest_message_id(digest_id: int, outbox_id: int, domain: str) -> str:
    """``<digest-N-outbox-M@domain>``: one per outbox row, the same on every attempt.

    It carries no reply token: a bounce of it is quarantined like any
    bounce but marks no address failing, and it belongs to no request.
    """
    checked = message_id(f"<digest-{digest_id}-outbox-{outbox_id}@{domain}>")
    if checked is None:
        raise RenderError(f"no usable Message-ID for digest {digest_id} in the domain {header_text(domain)!r}")
    return checked
