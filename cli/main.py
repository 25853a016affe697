"""The ``supportdesk`` command.

Every action an agent or approver can take in Slack exists here too, calling
the same service functions. A refusal prints one line on stderr and exits 1;
a malformed command line exits 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from cli import mail_commands, metrics_command
from cli import output, sla_command
from cli import backup_command, digest_command, doctor, outbox_command
from cli import export_command
from core import migrate, queries, services
from core.audit import verify_chain
from core.errors import InvalidInput, SupportdeskError
from core.log_format import configure_logging
from core.money import parse_amount
from core.queries import RequestFilter
from core.settings import Settings, load_settings
from core.store import Store

log = logging.getLogger("supportdesk")

Handler = Callable[[argparse.Namespace, Store], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        settings = load_settings()
        _configure_logging(args, settings)
        if args.handler is _serve:
            return _serve(args, settings)
        if getattr(args, "settings_only", False):  # doctor: it opens (and judges) the store itself
            return int(args.handler(args, settings))
        store = Store.open(settings)
        try:
            if args.handler is not _db_upgrade:
                migrate.require_current(store.engine)
            return args.handler(args, store)
        finally:
            store.dispose()
    except SupportdeskError as exc:
        print(f"supportdesk: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`supportdesk requests list | head`): stop quietly.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 141


def _configure_logging(args: argparse.Namespace, settings: Settings) -> None:
    """Once the settings are read (they choose the format): text lines, or JSON lines for a log shipper."""
    configure_logging(
        # serve reports what it does in its log; other commands speak through their output.
        logging.DEBUG if args.verbose else logging.INFO if args.handler is _serve else logging.WARNING,
        settings.log_format,
    )
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # aiosmtpd logs every SMTP command; our listener logs one line per message instead.
        logging.getLogger("mail.log").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supportdesk",
        description="Customer-support requests from e-mail and Slack, with an audit trail finance can verify.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    top = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = top.add_parser("serve", help="run the configured parts: mail listener, Slack app, scheduler")
    serve.set_defaults(handler=_serve)

    db = top.add_parser("db", help="database schema").add_subparsers(title="db commands", metavar="ACTION",
                                                                     required=True)
    up = db.add_parser("upgrade", help="create or migrate the schema to this version")
    up.set_defaults(handler=_db_upgrade)
    backup_command.register(db)

    imports = top.add_parser("import", help="load the customer master, invoices or agents from CSV")
    imp = imports.add_subparsers(title="what to import", metavar="KIND", required=True)
    for kind, fn in (("customers", services.import_customers), ("invoices", services.import_invoices),
                     ("agents", services.import_agents)):
        p = imp.add_parser(kind, help=f"upsert {kind} from FILE.csv")
        p.add_argument("file", type=Path, metavar="FILE.csv")
        _json_flag(p)
        p.set_defaults(handler=_import, importer=fn)

    _requests_parser(top)
    _approvals_parser(top)
    metrics_command.register(top)
    mail_commands.register(top)
    sla_command.register(top)
    outbox_command.register(top)
    digest_command.register(top)
    doctor.register(top)

    audit = top.add_parser("audit", help="the audit trail").add_subparsers(
        title="audit commands", metavar="ACTION", required=True)
    verify = audit.add_parser("verify", help="check every event's hash and link; exit 1 at the first bad one")
    _json_flag(verify)
    verify.set_defaults(handler=_audit_verify)

    agents = top.add_parser("agents", help="people who work in supportdesk").add_subparsers(
        metavar="ACTION", required=True)
    agents_list = agents.add_parser("list", help="list active agents and their roles")
    _json_flag(agents_list)
    agents_list.set_defaults(handler=_agents_list)
    return parser


def _requests_parser(top: Any) -> None:
    req = top.add_parser("requests", help="work on requests").add_subparsers(
        title="request commands", metavar="ACTION", required=True)

    p = req.add_parser("open", help="log a request on behalf of a customer")
    p.add_argument("--from", dest="requester", required=True, metavar="EMAIL")
    p.add_argument("--subject", required=True)
    p.add_argument("--body", default="")
    p.add_argument("--category")
    p.add_argument("--priority", default="normal")
    p.add_argument("--invoice", metavar="NUMBER")
    p.add_argument("--amount", metavar="DECIMAL", help="disputed amount, with --currency")
    p.add_argument("--currency", metavar="CUR")
    _actor(p)
    _json_flag(p)
    p.set_defaults(handler=_requests_open)

    p = req.add_parser("list", help="list requests, newest first")
    p.add_argument("--status", default="open", help="a state, 'open' (default) or 'all'")
    p.add_argument("--assignee", metavar="SLACK_USER_ID", help="a Slack user id, or 'none' for unassigned")
    p.add_argument("--customer", metavar="REF")
    p.add_argument("--limit", type=int, default=queries.DEFAULT_LIMIT)
    _json_flag(p)
    p.set_defaults(handler=_requests_list)

    p = req.add_parser("show", help="one request with its messages, approvals and events")
    p.add_argument("key")
    _json_flag(p)
    p.set_defaults(handler=_requests_show)

    export_command.register(req)

    for name, help_text, fn in (
        ("reply", "send a reply to the customer (by e-mail)", services.reply),
        ("note", "add an internal note (never sent)", services.add_note),
    ):
        p = _action(req, name, help_text, handler=_message)
        p.add_argument("--body", required=True)
        p.set_defaults(service=fn)

    simple: list[tuple[str, str, Callable[..., Any]]] = [
        ("claim", "take a new request", services.claim),
        ("wait", "wait on the customer (pauses the SLA clock)", services.wait_on_customer),
        ("customer-replied", "record a customer answer received outside e-mail", services.customer_replied),
        ("reopen", "reopen a resolved request", services.reopen),
        ("close", "close a resolved request", services.close),
    ]
    for name, help_text, fn in simple:
        _action(req, name, help_text, lambda a, s, fn=fn: fn(s, a.key, actor=a.actor))

    _action(req, "assign", "assign or reassign to an agent",
            lambda a, s: services.assign(s, a.key, to=a.to, actor=a.actor),
            ).add_argument("--to", required=True, metavar="SLACK_USER_ID")

    p = _action(req, "resolve", "resolve with a note (refused while an approval is pending)",
                lambda a, s: services.resolve(s, a.key, note=a.note, code=a.code, actor=a.actor))
    p.add_argument("--note", required=True)
    p.add_argument("--code", help="resolution code, e.g. fixed, refunded, duplicate")

    _action(req, "merge", "close KEY as a duplicate of another request",
            lambda a, s: services.merge(s, a.key, into=a.into, actor=a.actor),
            ).add_argument("--into", required=True, metavar="KEY")

    _action(req, "dismiss", "close KEY as not a request (no resolution, no mail to the sender)",
            lambda a, s: services.dismiss(s, a.key, reason=a.reason, actor=a.actor),
            ).add_argument("--reason", help="why it is not a request, for the record")

    _action(req, "priority", "set the priority",
            lambda a, s: services.set_priority(s, a.key, a.priority, actor=a.actor),
            ).add_argument("priority", choices=("urgent", "high", "normal", "low"))

    _action(req, "category", "set the category",
            lambda a, s: services.set_category(s, a.key, a.category, actor=a.actor),
            ).add_argument("category")

    _action(req, "link-customer", "link the request to a customer of the master",
            lambda a, s: services.link_customer(s, a.key, a.customer, actor=a.actor),
            ).add_argument("--customer", required=True, metavar="REF")

    p = _action(req, "link-invoice", "link an invoice of the customer, and the disputed amount",
                lambda a, s: services.link_invoice(s, a.key, a.invoice,
                                                   disputed=_optional_money(a.amount, a.currency), actor=a.actor))
    p.add_argument("--invoice", required=True, metavar="NUMBER")
    p.add_argument("--amount", metavar="DECIMAL")
    p.add_argument("--currency", metavar="CUR")


def _action(actions: Any, name: str, help_text: str, call: Callable[..., Any] | None = None, *,
            handler: Handler | None = None) -> argparse.ArgumentParser:
    """A ``requests ACTION KEY ... --as ID [--json]`` command; the caller adds its own options."""
    p = actions.add_parser(name, help=help_text)
    p.add_argument("key")
    _actor(p)
    _json_flag(p)
    p.set_defaults(handler=handler or _request_action, call=call)
    return p


def _approvals_parser(top: Any) -> None:
    app = top.add_parser("approvals", help="credits, refunds and write-offs").add_subparsers(
        title="approval commands", metavar="ACTION", required=True)

    p = app.add_parser("request", help="ask for a credit, refund or write-off on a request")
    p.add_argument("key")
    p.add_argument("--kind", required=True, choices=("credit", "refund", "write_off"),
                   type=lambda value: value.strip().lower().replace("-", "_"), help="write-off is also accepted")
    p.add_argument("--amount", required=True, metavar="DECIMAL")
    p.add_argument("--currency", required=True, metavar="CUR")
    p.add_argument("--reason", required=True)
    _actor(p)
    _json_flag(p)
    p.set_defaults(handler=_approval_action, call=lambda a, s: services.request_approval(
        s, a.key, kind=a.kind, amount=parse_amount(a.amount, a.currency), reason=a.reason, actor=a.actor))

    p = app.add_parser("approve", help="approve (approvers only, within their limit)")
    p.add_argument("id", type=int)
    p.add_argument("--note")
    _actor(p)
    _json_flag(p)
    p.set_defaults(handler=_approval_action, call=lambda a, s: services.decide_approval(
        s, a.id, approve=True, note=a.note, actor=a.actor))

    p = app.add_parser("reject", help="reject, with a reason")
    p.add_argument("id", type=int)
    p.add_argument("--reason", required=True)
    _actor(p)
    _json_flag(p)
    p.set_defaults(handler=_approval_action, call=lambda a, s: services.decide_approval(
        s, a.id, approve=False, note=a.reason, actor=a.actor))

    p = app.add_parser("list", help="list approvals, newest first")
    p.add_argument("--status", default="pending", help="pending (default), approved, rejected or all")
    _json_flag(p)
    p.set_defaults(handler=_approvals_list)


def _actor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as", dest="actor", required=True, metavar="SLACK_USER_ID",
                   help="the agent doing this, by Slack user id")


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (stable field names; see README)")


def _optional_money(amount: str | None, currency: str | None) -> Any:
    if amount is None and currency is None:
        return None
    if amount is None or currency is None:
        raise InvalidInput("--amount and --currency go together")
    return parse_amount(amount, currency)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None


# --- handlers ---------------------------------------------------------------


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from cli.serve import serve

    return serve(settings)


def _db_upgrade(args: argparse.Namespace, store: Store) -> int:
    before = migrate.current_revision(store.engine)
    migrate.upgrade(store.engine)
    after = migrate.current_revision(store.engine)
    if before == after:
        print(f"schema already current ({after})")
    else:
        print(f"schema upgraded from {before or 'empty'} to {after}")
    return 0


def _import(args: argparse.Namespace, store: Store) -> int:
    result = args.importer(store, _read(args.file), source=str(args.file))
    if args.json:
        output.emit_json(result.to_json())
    else:
        print(f"{result.kind}: {result.rows} rows, {result.created} created, {result.updated} updated, "
              f"{result.unchanged} unchanged")
    return 0


def _requests_open(args: argparse.Namespace, store: Store) -> int:
    view = services.open_request(
        store,
        channel="cli",
        mail=services.InboundMail(from_address=args.requester, subject=args.subject, body_text=args.body),
        category=args.category,
        priority=args.priority,
        actor=args.actor,
        invoice_number=args.invoice,
        disputed=_optional_money(args.amount, args.currency),
    )
    _show_request(args, view)
    return 0


def _requests_list(args: argparse.Namespace, store: Store) -> int:
    if args.limit < 1:
        raise InvalidInput("--limit must be at least 1")
    views = queries.list_requests(
        store, RequestFilter(status=args.status, assignee=args.assignee, customer=args.customer, limit=args.limit)
    )
    if args.json:
        output.emit_json([v.to_json() for v in views])
    elif args.status == "open" and not (args.assignee or args.customer):
        output.request_rows(views, empty="no open requests (resolved and closed ones: --status all)")
    else:
        output.request_rows(views)
    return 0


def _requests_show(args: argparse.Namespace, store: Store) -> int:
    detail = queries.get_request_detail(store, args.key)
    if args.json:
        output.emit_json(detail.to_json())
    else:
        output.request_detail(detail)
    return 0


def _message(args: argparse.Namespace, store: Store) -> int:
    message = args.service(store, args.key, args.body, actor=args.actor)
    if args.json:
        output.emit_json(message.to_json())
    elif message.direction == "outbound":
        print(f"reply to {message.to_addresses[0]} queued for sending ({message.message_id})")
    else:
        print(f"internal note added to {args.key.upper()}")
    return 0


def _request_action(args: argparse.Namespace, store: Store) -> int:
    _show_request(args, args.call(args, store))
    return 0


def _show_request(args: argparse.Namespace, view: Any) -> None:
    if args.json:
        output.emit_json(view.to_json())
    else:
        output.request_summary(view)


def _approval_action(args: argparse.Namespace, store: Store) -> int:
    approval = args.call(args, store)
    if args.json:
        output.emit_json(approval.to_json())
    else:
        amount = output.money(approval.amount_minor, approval.currency)
        print(f"approval {approval.id} on {approval.request_key}: {approval.kind} of {amount} is {approval.status}")
    return 0


def _approvals_list(args: argparse.Namespace, store: Store) -> int:
    approvals = queries.list_approvals(store, args.status)
    if args.json:
        output.emit_json([a.to_json() for a in approvals])
    elif args.status == "pending":
        output.approval_rows(approvals, empty="no pending approvals (decided ones: --status all)")
    else:
        output.approval_rows(approvals)
    return 0


def _audit_verify(args: argparse.Namespace, store: Store) -> int:
    with store.read() as session:
        result = verify_chain(session)
    if args.json:
        output.emit_json({
            "ok": result.ok, "checked": result.checked, "tip_seq": result.tip_seq, "tip_hash": result.tip_hash,
            "first_bad_seq": result.first_bad_seq, "problem": result.problem,
        })
    elif result.ok:
        print(f"audit trail intact: {result.checked} events checked; tip #{result.tip_seq} {result.tip_hash}")
    else:
        print(f"audit trail BROKEN at event {result.first_bad_seq}: {result.problem} "
              f"({result.checked} events before it are intact)")
    return 0 if result.ok else 1


def _agents_list(args: argparse.Namespace, store: Store) -> int:
    agents = queries.list_agents(store)
    if args.json:
        output.emit_json([a.to_json() for a in agents])
    else:
        output.table(
            ("SLACK ID", "NAME", "EMAIL", "ROLES", "APPROVAL LIMIT"),
            ((a.slack_user_id, a.name, a.email, ",".join(a.roles),
              output.money(a.approval_limit_minor, a.approval_currency) if a.approval_limit_minor else "-")
             for a in agents),
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
