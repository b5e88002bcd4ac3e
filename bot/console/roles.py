"""Who may do what in the console: one permission table, deny by default."""

from __future__ import annotations

from bot.config import ConsoleSettings

ROLES = ("operator", "marketer", "admin")

# "console" is using the console at all (logging out, one's own pages): every role has it.
PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": frozenset(
        {"console", "queue", "conversations.read", "conversations.reply", "leads.read", "leads.edit"}
    ),
    "marketer": frozenset({"console", "leads.read", "flows.read", "flows.edit", "reports.read"}),
    "admin": frozenset(
        {
            "console",
            "queue",
            "conversations.read",
            "conversations.reply",
            "leads.read",
            "leads.edit",
            "flows.read",
            "flows.edit",
            "reports.read",
            "data.export",
            "operators.manage",
            "audit.read",
        }
    ),
}


def permissions(role: str, settings: ConsoleSettings) -> frozenset[str]:
    """What a role may do; an unknown role may do nothing."""
    granted = PERMISSIONS.get(role, frozenset())
    if role == "marketer" and settings.marketers_read_conversations:
        granted |= {"conversations.read"}
    return granted


def allowed(role: str, permission: str | None, settings: ConsoleSettings) -> bool:
    """Whether a role may use something needing `permission`; None (undeclared) is for admins only."""
    if role == "admin":
        return True
    return permission is not None and permission in permissions(role, settings)
