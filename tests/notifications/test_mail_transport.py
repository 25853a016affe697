"""The transports against real counterparts: an aiosmtpd relay on loopback, a Maildir on disk."""

from __future__ import annotations

import mailbox
import ssl
import subprocess
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from core.settings import HostPort, Settings
from notifications.mail_render import build_message
from notifications.mail_transport import (
    MaildirTransport,
    PermanentFailure,
    SmtpRelay,
    TemporaryFailure,
    transport_for,
)
from tests.notifications import SUPPORT, SinkHandler, free_port, running_sink, sample_email

SETTINGS = Settings(support_addresses=(SUPPORT,))
PASSWORD = "s3cret-relay-pass"


def relay_settings(port: int, **overrides: Any) -> Settings:
    return Settings(support_addresses=(SUPPORT,), outbound_smtp=HostPort("127.0.0.1", port), **overrides)


def a_message() -> EmailMessage:
    return build_message(sample_email("acknowledgment"), SETTINGS)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def test_a_message_reaches_the_relay_with_its_envelope() -> None:
    port = free_port()
    with running_sink(port) as sink:
        SmtpRelay(relay_settings(port)).send(a_message(), SUPPORT, ["jane@acme.test"])

    (received,) = sink.received
    assert (received.mail_from, received.rcpt_tos) == (SUPPORT, ("jane@acme.test",))
    assert received.message["Message-ID"] == a_message()["Message-ID"]
    assert received.content.endswith(b"\r\n")


def test_no_relay_listening_is_temporary() -> None:
    with pytest.raises(TemporaryFailure, match="cannot talk to the relay at 127.0.0.1:.*ConnectionRefusedError"):
        SmtpRelay(relay_settings(free_port())).send(a_message(), SUPPORT, ["jane@acme.test"])


@pytest.mark.parametrize(
    ("where", "reply", "failure", "words"),
    [
        ("rcpt_reply", "451 4.3.0 Try again later", TemporaryFailure, "deferred the recipient"),
        ("data_reply", "451 4.3.0 Try again later", TemporaryFailure, "refused the message: 451"),
        ("rcpt_reply", "550 5.1.1 No such user", PermanentFailure, "refused the recipient"),
        ("data_reply", "554 5.7.1 Rejected as spam", PermanentFailure, "refused the message: 554"),
    ],
)
def test_refusals_are_classified_by_their_code(where: str, reply: str, failure: type[Exception], words: str) -> None:
    port = free_port()
    with running_sink(port, SinkHandler(**{where: reply})) as sink:
        with pytest.raises(failure, match=words) as caught:
            SmtpRelay(relay_settings(port)).send(a_message(), SUPPORT, ["jane@acme.test"])

    assert reply.split()[0] in str(caught.value)
    assert sink.received == []


def test_an_invalid_envelope_address_never_reaches_the_relay() -> None:
    port = free_port()
    with running_sink(port) as sink:
        for recipients in (["jane@acme.test\r\nRCPT TO:<evil@x.test>"], ["jane @acme.test"], []):
            with pytest.raises(PermanentFailure, match="invalid envelope address|no recipients"):
                SmtpRelay(relay_settings(port)).send(a_message(), SUPPORT, recipients)

    assert sink.rcpt_commands == []


def test_starttls_then_auth(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    logins: list[tuple[str, bytes, bytes, bool]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((mechanism, auth_data.login, auth_data.password, session.ssl is not None))
        # handled=False: aiosmtpd then answers 535 itself instead of leaving the client waiting.
        return AuthResult(success=auth_data.password == PASSWORD.encode(), handled=False)

    port = free_port()
    settings = relay_settings(port, outbound_smtp_starttls=True, outbound_smtp_user="mailer",
                              outbound_smtp_password=PASSWORD)
    with running_sink(port, tls_context=server_tls, require_starttls=True, auth_require_tls=True,
                      authenticator=authenticator) as sink:
        SmtpRelay(settings, ssl_context=ssl.create_default_context(cafile=str(cert))).send(
            a_message(), SUPPORT, ["jane@acme.test"])
        wrong = relay_settings(port, outbound_smtp_starttls=True, outbound_smtp_user="mailer",
                               outbound_smtp_password="wrong-" + PASSWORD)
        with pytest.raises(TemporaryFailure, match="refused our login as 'mailer': 535") as caught:
            SmtpRelay(wrong, ssl_context=ssl.create_default_context(cafile=str(cert))).send(
                a_message(), SUPPORT, ["jane@acme.test"])

    (received,) = sink.received
    assert received.tls and received.authenticated
    # Every AUTH came after STARTTLS; the first (ours) carried the right password.
    assert logins[0][1:] == (b"mailer", PASSWORD.encode(), True)
    assert all(login == b"mailer" and tls for _mechanism, login, _password, tls in logins)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(SmtpRelay(wrong))


def test_an_untrusted_certificate_is_temporary_and_nothing_is_sent(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    port = free_port()
    with running_sink(port, tls_context=server_tls, require_starttls=True) as sink:
        with pytest.raises(TemporaryFailure, match="SSLCertVerificationError"):
            SmtpRelay(relay_settings(port, outbound_smtp_starttls=True)).send(a_message(), SUPPORT, ["jane@acme.test"])

    assert sink.received == []


def test_starttls_configured_but_not_offered_never_falls_back_to_plain_text() -> None:
    port = free_port()
    with running_sink(port) as sink:
        with pytest.raises(TemporaryFailure, match="STARTTLS"):
            SmtpRelay(relay_settings(port, outbound_smtp_starttls=True)).send(a_message(), SUPPORT, ["jane@acme.test"])

    assert sink.received == [] and sink.rcpt_commands == []


def test_maildir_writes_a_whole_message_into_new(tmp_path: Path) -> None:
    folder = tmp_path / "outgoing"

    MaildirTransport(folder).send(a_message(), SUPPORT, ["jane@acme.test"])

    (path,) = (folder / "new").iterdir()
    assert list((folder / "tmp").iterdir()) == []
    raw = path.read_bytes()
    assert b"\r\n" not in raw
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert msg["Message-ID"] == a_message()["Message-ID"] and msg["To"] == "jane@acme.test"
    assert len(mailbox.Maildir(folder, create=False)) == 1


def test_maildir_that_cannot_be_written_is_temporary(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    with pytest.raises(TemporaryFailure, match="cannot write to the Maildir"):
        MaildirTransport(blocker / "outgoing").send(a_message(), SUPPORT, ["jane@acme.test"])


def test_transport_for_picks_the_relay_only_when_one_is_configured(tmp_path: Path) -> None:
    assert isinstance(transport_for(relay_settings(2525)), SmtpRelay)
    assert isinstance(transport_for(Settings(outgoing_maildir=tmp_path)), MaildirTransport)
