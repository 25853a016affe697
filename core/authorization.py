"""Who may do what. Pure checks over agents, requests and approvals.

Every rule lives here and runs inside the service function, at the moment of
the change, whatever front end asked: a button rendered an hour ago grants
nothing.
"""

from __future__ import annotations

from enum import StrEnum

from core.errors import PermissionDenied
from core.models import Agent, Approval, Customer, Request
from core.money import format_minor


class Role(StrEnum):
    AGENT = "agent"
    APPROVER = "approver"
    MANAGER = "manager"
    ADMIN = "admin"


ALL_ROLES = frozenset(r.value for r in Role)


def describe(agent: Agent) -> str:
    return f"{agent.name} ({agent.slack_user_id})"


def require_active(agent: Agent) -> None:
    if not agent.active:
        raise PermissionDenied(f"{describe(agent)} is deactivated")


def require_role(agent: Agent, role: Role, doing: str) -> None:
    require_active(agent)
    if role.value not in agent.role_set:
        raise PermissionDenied(f"{describe(agent)} cannot {doing}: that needs the {role.value} role")


def require_agent(agent: Agent, doing: str) -> None:
    """Only people with the agent role act on requests."""
    require_role(agent, Role.AGENT, doing)


def require_verified_customer(request: Request, customer: Customer | None, doing: str) -> Customer:
    """Money moves only for customers whose KYC is verified."""
    if customer is None:
        raise PermissionDenied(f"cannot {doing} on {request.key}: it is not linked to a customer")
    if customer.kyc_status != "verified":
        raise PermissionDenied(
            f"cannot {doing} on {request.key}: customer {customer.external_ref} has KYC status "
            f"{customer.kyc_status}, and adjustments need a verified customer"
        )
    return customer


def require_can_decide(approver: Agent, approval: Approval, request: Request) -> None:
    """Approvers decide within their limit, never on a request they raised, asked about or work."""
    require_role(approver, Role.APPROVER, f"decide approval {approval.id}")
    if approval.requested_by_id == approver.id:
        raise PermissionDenied(f"{describe(approver)} asked for approval {approval.id} and cannot decide it")
    if request.opened_by_id == approver.id:
        raise PermissionDenied(
            f"{describe(approver)} opened {request.key} and cannot decide its approval {approval.id}"
        )
    if request.assignee_id == approver.id:
        raise PermissionDenied(
            f"{describe(approver)} is assigned to {request.key} and cannot decide its approval {approval.id}"
        )
    amount = f"{format_minor(approval.amount_minor, approval.currency)} {approval.currency}"
    if approver.approval_currency != approval.currency:
        raise PermissionDenied(
            f"{describe(approver)} has no approval limit in {approval.currency}, so cannot decide {amount}"
        )
    if approval.amount_minor > approver.approval_limit_minor:
        limit = format_minor(approver.approval_limit_minor, approval.currency)
        raise PermissionDenied(
            f"{amount} is above the approval limit of {describe(approver)} ({limit} {approval.currency})"
        )
