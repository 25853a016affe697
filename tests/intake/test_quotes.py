"""strip_quoted on replies as common clients write them, on text it must leave alone, and on hostile input.

The fixtures are written here after the layouts these clients produce; each
one's expected result is the new text only.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import pytest

from intake.quotes import MAX_INPUT_CHARS, strip_quoted

NEW = "Thanks, the refund arrived.\nPlease close the request."

FIXTURES = {
    "gmail": f"""{NEW}

On Mon, Jan 5, 2026 at 10:02 AM Support Desk <support@desk.example> wrote:

> Hello Carla,
>
> we sent the refund today.
>
> On Sun, Jan 4, 2026 at 9:00 PM Carla <carla@example.com> wrote:
>> Where is my refund?
""",
    "gmail_wrapped_over_two_lines": f"""{NEW}

On Mon, Jan 5, 2026 at 10:02 AM Support Desk of Example Company Limited <
support@desk.example> wrote:

> we sent the refund today.
""",
    "wrapped_over_three_lines": f"""{NEW}

On Monday, January 5, 2026 at 10:02:11 AM
Central European Standard Time, Support Desk
<support@desk.example> wrote:
> we sent the refund today.
""",
    "outlook_desktop": f"""{NEW}

________________________________
From: Support Desk <support@desk.example>
Sent: Monday, January 5, 2026 10:02 AM
To: Carla Customer <carla@example.com>
Subject: RE: [SR-42] Refund

Hello Carla,
we sent the refund today.
""",
    "outlook_header_block_bold": f"""{NEW}

*From:* Support Desk <support@desk.example>
*Sent:* Monday, January 5, 2026 10:02 AM
*To:* Carla Customer <carla@example.com>
*Subject:* RE: [SR-42] Refund

we sent the refund today.
""",
    "outlook_original_message": f"""{NEW}

-----Original Message-----
From: Support Desk [mailto:support@desk.example]
Sent: Monday, January 5, 2026 10:02 AM
Subject: RE: Refund

we sent the refund today.
""",
    "outlook_express_original_message": f"""{NEW}

----- Original Message -----
From: "Support Desk" <support@desk.example>
Date: Monday, January 05, 2026 10:02 AM

we sent the refund today.
""",
    "outlook_for_mac": f"""{NEW}

From: Support Desk <support@desk.example>
Date: Monday, 5 January 2026 at 10:02
To: Carla Customer <carla@example.com>
Subject: Re: Refund

we sent the refund today.
""",
    "apple_mail": f"""{NEW}

> On 5 Jan 2026, at 10:02, Support Desk <support@desk.example> wrote:
>
> we sent the refund today.
""",
    "apple_mail_unquoted_attribution": f"""{NEW}

On 5 Jan 2026, at 10:02, Support Desk <support@desk.example> wrote:

> we sent the refund today.
""",
    "thunderbird": f"""{NEW}

On 05/01/2026 10:02, Support Desk wrote:
> Hello Carla,
> we sent the refund today.
""",
    "android_samsung": f"""{NEW}

Sent from my Galaxy

-------- Original message --------
From: Support Desk <support@desk.example>
Date: 1/5/26 10:02 (GMT+01:00)
To: carla@example.com
Subject: Re: Refund

we sent the refund today.
""",
    "html_converted_gmail_quote": f"""{NEW}

On Mon, Jan 5, 2026 at 10:02 AM Support Desk <support@desk.example> wrote:

  Hello Carla,
  we sent the refund today.
""",
    "german_gmail": f"""{NEW}

Am Mo., 5. Jan. 2026 um 10:02 Uhr schrieb Support Desk <support@desk.example>:

> wir haben die Erstattung heute veranlasst.
""",
    "german_outlook": f"""{NEW}

Von: Support Desk <support@desk.example>
Gesendet: Montag, 5. Januar 2026 10:02
An: Carla Kundin <carla@example.com>
Betreff: AW: Erstattung

wir haben die Erstattung heute veranlasst.
""",
    "german_original_message": f"""{NEW}

-----Ursprüngliche Nachricht-----
Von: Support Desk <support@desk.example>
Gesendet: Montag, 5. Januar 2026 10:02

wir haben die Erstattung heute veranlasst.
""",
    "french": f"""{NEW}

Le lun. 5 janv. 2026 à 10:02, Support Desk <support@desk.example> a\u00a0écrit\u00a0:

> nous avons effectué le remboursement.
""",
    "french_thunderbird": f"""{NEW}

Le 05/01/2026 à 10:02, Support Desk a écrit :
> nous avons effectué le remboursement.
""",
    "spanish": f"""{NEW}

El lun, 5 ene 2026 a las 10:02, Support Desk (<support@desk.example>) escribió:

> hemos realizado el reembolso.
""",
    "dutch": f"""{NEW}

Op ma 5 jan. 2026 om 10:02 schreef Support Desk <support@desk.example>:

> we hebben het geld teruggestort.
""",
}


@pytest.mark.parametrize("client", sorted(FIXTURES))
def test_common_clients(client: str) -> None:
    expected = NEW + ("\n\nSent from my Galaxy" if client == "android_samsung" else "")
    assert strip_quoted(FIXTURES[client]) == expected


def test_iphone_keeps_the_signature_above_the_quote() -> None:
    text = "Yes please.\n\nSent from my iPhone\n\nOn Jan 5, 2026, at 10:02, Support <support@desk.example> wrote:\n\n" \
           "> Shall we cancel?\n"
    assert strip_quoted(text) == "Yes please.\n\nSent from my iPhone"


def test_android_gmail() -> None:
    text = "Ok\n\nOn Mon, 5 Jan 2026, 10:02 Support Desk, <support@desk.example> wrote:\n\n> Shall we cancel?\n"
    assert strip_quoted(text) == "Ok"


def test_crlf_text_is_cut_too() -> None:
    text = "Ok\r\n\r\nOn Mon, 5 Jan 2026, 10:02 Support <support@desk.example> wrote:\r\n> Shall we?\r\n"
    assert strip_quoted(text) == "Ok"


def test_trailing_quote_without_attribution_is_dropped() -> None:
    assert strip_quoted("Agreed.\n\n> Shall we cancel?\n> Thanks\n\n") == "Agreed."


def test_interleaved_answers_are_kept_up_to_the_last_answer() -> None:
    text = """On Mon, Jan 5, 2026 at 10:02 AM Support <support@desk.example> wrote:
> Which order is it?
Order 17.
> And the amount?
EUR 40.
> Thanks, we will check.
>
"""
    assert strip_quoted(text) == text[:text.index("EUR 40.") + len("EUR 40.")]


def test_bottom_posted_reply_is_left_alone() -> None:
    text = "> Which order is it?\n\nOrder 17, as I said.\n"
    assert strip_quoted(text) is text


@pytest.mark.parametrize("text", [
    "Just a question about invoice INV-2041.\n",
    "Thanks.\nOn Monday I called and your colleague wrote:\nthe refund is on its way.\n",  # no date, time or address
    "From: my accountant, who asked me to forward this.\nRegards\n",               # no Sent:/Date: below
    "Le client a écrit :\nrien\n",
    "-----Original Message\n",
    "",
])
def test_text_without_history_comes_back_unchanged(text: str) -> None:
    assert strip_quoted(text) == text


@pytest.mark.parametrize("marker", ["---------- Forwarded message ---------", "Begin forwarded message:",
                                    "-------- Weitergeleitete Nachricht --------"])
def test_forwarded_messages_are_content_not_history(marker: str) -> None:
    text = f"""Please look at what the bank sent me.

{marker}
From: Bank <bank@example.com>
Date: Mon, 5 Jan 2026 at 09:00
Subject: Chargeback
To: carla@example.com

Your card was charged twice.
"""
    assert strip_quoted(text) == text


def test_a_reply_above_a_forward_is_still_cut() -> None:
    text = f"""{NEW}

On Mon, Jan 5, 2026 at 10:02 AM Support Desk <support@desk.example> wrote:
> Please forward the bank's message.
> ---------- Forwarded message ---------
> Your card was charged twice.
"""
    assert strip_quoted(text) == NEW


def test_only_history_returns_the_input() -> None:
    forwarded = "-----Original Message-----\nFrom: Bank <bank@example.com>\nSent: Monday\n\nYour card was charged.\n"
    quoted_only = "> Your card was charged.\n> Twice.\n"
    attribution_first = "On Mon, Jan 5, 2026 at 10:02 AM Bank <bank@example.com> wrote:\n> Your card was charged.\n"
    for text in (forwarded, quoted_only, attribution_first):
        assert strip_quoted(text) == text


def test_huge_input_is_returned_unchanged() -> None:
    text = "new\n" + "x" * MAX_INPUT_CHARS + "\n> quoted\n"
    assert strip_quoted(text) is text


def test_overlong_lines_are_never_taken_for_headers() -> None:
    long_attribution = "On Mon, 5 Jan 2026 " + "a" * 1_000 + " <x@example.com> wrote:"
    wrapped = "On Mon, 5 Jan 2026 at 10:02 Support <\n" + "s" * 1_000 + "@desk.example> wrote:"
    for attribution in (long_attribution, wrapped):
        text = f"new text\n{attribution}\n> quoted\nmore new text\n"
        assert strip_quoted(text) == text


def elapsed(text: str, work: Callable[[str], object] = strip_quoted) -> float:
    """The best of 5 runs, without the garbage collector (whose pauses grow with the input, not the algorithm)."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            started = time.perf_counter()
            work(text)
            best = min(best, time.perf_counter() - started)
    finally:
        gc.enable()
    return best


def lines_split_and_joined(text: str) -> str:
    """What any line-based stripper does at least: its time grows with the input as the allocator lets it."""
    return "\n".join(text.split("\n"))


@pytest.mark.parametrize("pair", [
    "On Mon, a@b.c wrote:\n> x\n",                     # attribution after attribution, each answered
    "On Mon, 5 Jan\n2026 at\n",                          # attribution openings that never finish
    "From: someone\nTo: someone else\n",                 # From: blocks without Sent:
    "________________________________\n> x\n",
    "Am 5.1.2026 schrieb x\n" + "y" * 900 + "\n",
])
def test_time_is_linear_in_the_input(pair: str) -> None:
    """4x the input must not cost much more than 4x the time (a quadratic stripper would take 16x).

    The bound leaves room for a busy machine (the other core running a database) and still fails at 16x.
    """
    small, large = pair * 5_000, pair * 20_000
    elapsed(small)  # warm up
    # Taken in turns and the best of each kept, so a burst of work elsewhere (the suite runs on every core)
    # cannot land on one size only.
    smalls, larges, base_smalls, base_larges = [], [], [], []
    for _ in range(3):
        smalls.append(elapsed(small))
        larges.append(elapsed(large))
        base_smalls.append(elapsed(small, lines_split_and_joined))
        base_larges.append(elapsed(large, lines_split_and_joined))
    ratio = min(larges) / max(min(smalls), 1e-6)
    # Splitting a text four times as long into lines takes 4-8x as long here (memory, not algorithm), and
    # more on a loaded machine; a stripper that grows like that is linear too. A quadratic one fails both.
    base_ratio = min(base_larges) / max(min(base_smalls), 1e-6)
    assert ratio < 11 or ratio < min(1.5 * base_ratio, 14), (
        f"{ratio:.1f}x the time for 4x the input (splitting it into lines: {base_ratio:.1f}x)")


def test_pathological_input_still_gives_an_answer() -> None:
    text = "On Mon, a@b.c wrote:\n> x\n" * 10_000
    stripped = strip_quoted(text)
    assert stripped and stripped == text.rstrip("\n").rsplit("\n", 1)[0]
