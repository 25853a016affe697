"""The jinja2 environment and the e-mail templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from jinja2 import TemplateNotFound, UndefinedError

from core.services.outbox import EMAIL_TOPICS
from notifications.mail_render import body_text
from templates import TEMPLATE_ROOT, environment, render
from tests.notifications import sample_email

REPO_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
CONTEXT = dict(request_key="SR-12", subject="Charged twice", customer_name=None, author_name=None,
               body_text="Text.", resolution_note=None)


def test_there_is_a_template_for_every_email_topic() -> None:
    # The digest's mail is made from its own figures (tests/notifications/test_digest.py), not from a request.
    assert sorted(p.name for p in (REPO_TEMPLATES / "email").glob("*.j2")) == sorted(
        [f"{topic}.txt.j2" for topic in EMAIL_TOPICS] + ["digest.txt.j2"]
    )


@pytest.mark.parametrize("topic", EMAIL_TOPICS)
def test_every_topic_renders_with_strict_undefined(topic: str) -> None:
    text = body_text(sample_email(topic))

    assert "SR-12" in text
    assert text.endswith("\n") and "{{" not in text and "{%" not in text


@pytest.mark.parametrize("topic", EMAIL_TOPICS)
def test_every_topic_renders_without_the_optional_values(topic: str) -> None:
    text = body_text(sample_email(topic, customer_name=None, author_name=None, resolution_note=None))

    assert "None" not in text


@pytest.mark.parametrize("topic", EMAIL_TOPICS)
def test_a_missing_variable_is_an_error_not_an_empty_string(topic: str) -> None:
    context = dict(CONTEXT)
    del context["request_key"]

    with pytest.raises(UndefinedError, match="request_key"):
        render(f"email/{topic}.txt.j2", **context)


def test_acknowledgment_wording() -> None:
    text = body_text(sample_email("acknowledgment"))

    assert "logged it\nas request SR-12 for Acme Verified Ltd:" in text
    assert "    Charged twice\n" in text
    assert "reply to this mail; your answer is added to SR-12" in text


def test_reply_puts_the_agents_text_first_then_a_signature_separator_and_the_key() -> None:
    text = body_text(sample_email("reply"))

    assert text.startswith("We have refunded the second charge.\nIt shows within five days.\n\n-- \n")
    assert "Alice Agent, support team\n" in text
    assert text.endswith("Request SR-12: reply to this mail to add to it.\n")


def test_resolution_notice_says_a_reply_reopens_the_request() -> None:
    text = body_text(sample_email("resolution_notice"))

    assert "marked your request SR-12 as resolved" in text
    assert "\n\nRefunded EUR 20.00.\n\n" in text
    assert "replying reopens your request" in text
    assert not any(ch.isdigit() for ch in text.replace("SR-12", "").replace("EUR 20.00", ""))


def test_templates_are_plain_text_not_html_escaped() -> None:
    text = body_text(sample_email("reply", body_text="Use <b>x</b> & \"y\""))

    assert text.startswith('Use <b>x</b> & "y"\n')


def test_the_template_folder_is_found() -> None:
    assert TEMPLATE_ROOT == REPO_TEMPLATES
    assert (TEMPLATE_ROOT / "email" / "reply.txt.j2").is_file()
    assert environment() is environment()  # built once


def test_the_loader_refuses_paths_that_leave_the_folder() -> None:
    for name in ("../notifications/mail_render.py", "/etc/passwd", "email/missing.txt.j2"):
        with pytest.raises(TemplateNotFound):
            environment().get_template(name)


def test_the_filters_format_figures_one_way() -> None:
    from templates import change, duration, money, percent

    assert (change(12, 70, 7), change(8, 70, 7), change(10, 70, 7)) == (" ▲ 20%", " ▼ 20%", " =")
    assert (change(5, 0, 7), change(0, 0, 7), change(None, 3)) == (" (new)", "", "")
    assert (duration(None), duration(59), duration(5400), duration(3 * 86400)) == ("n/a", "0 min", "1.5 h", "3.0 d")
    assert money({"amount_minor": 12050, "currency": "EUR"}) == "120.50 EUR" and money(None) == "n/a"
    assert percent({"rate": 0.8333, "numerator": 5, "denominator": 6}) == "83% (5/6)"
    assert percent({"rate": None, "numerator": 0, "denominator": 0}) == "n/a"
