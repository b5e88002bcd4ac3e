"""What WhatsApp allows a flow step: at most 3 reply buttons of 20 characters, and approved templates.

Outside the 24-hour window only an approved template may go: a step names one with
`whatsapp_template="name"`, optionally `whatsapp_language="en_US"` (default: the configured template's) and
`whatsapp_parameters=["{{ lead.first_name or 'there' }}", ...]` (Jinja, one per `{{1}}`, `{{2}}`... of the
template's body). Lint checks them against the templates configured in `[[channels.whatsapp.templates]]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_BUTTONS = 3
MAX_BUTTON_CHARS = 20
CATEGORIES = ("marketing", "utility", "authentication")


@dataclass(frozen=True)
class WhatsAppTemplate:
    """An approved WhatsApp message template: its name, language, body parameters and category."""

    name: str
    language: str
    parameters: int = 0
    category: str = "marketing"  # Meta's categories, lower case


@dataclass(frozen=True)
class TemplateStep:
    """A step's WhatsApp template: its name, language (None: the configured one's) and Jinja parameters."""

    name: str
    language: str | None = None
    parameters: tuple[str, ...] = ()


def button_problems(buttons: tuple[str, ...]) -> str | None:
    """Why these buttons cannot be WhatsApp reply buttons (they then go as a list in the text), or None."""
    if len(buttons) > MAX_BUTTONS:
        return f"WhatsApp shows at most {MAX_BUTTONS} buttons (this step has {len(buttons)}): they would go as text"
    long = [label for label in buttons if len(label) > MAX_BUTTON_CHARS]
    if long:
        return f"WhatsApp buttons take {MAX_BUTTON_CHARS} characters; {long[0]!r} is longer: they would go as text"
    return None


def template_problem(step: TemplateStep, known: Mapping[str, tuple[WhatsAppTemplate, ...]]) -> str | None:
    """Why a step's template is not one of the configured ones (name, language, parameter count), or None."""
    versions = known.get(step.name)
    if not versions:
        names = ", ".join(sorted(known)) or "none are configured"
        return (
            f"WhatsApp template {step.name!r} is not configured ([[channels.whatsapp.templates]]; "
            f"`kindling whatsapp templates` lists Meta's): known: {names}"
        )
    template = next((t for t in versions if step.language in (None, t.language)), None)
    if template is None:
        languages = ", ".join(t.language for t in versions)
        return f"WhatsApp template {step.name!r} has no language {step.language!r} (it has {languages})"
    if len(step.parameters) != template.parameters:
        return (
            f"WhatsApp template {step.name!r} ({template.language}) takes {template.parameters} parameters; "
            f"the step gives {len(step.parameters)}"
        )
    return None


def by_name(templates: tuple[WhatsAppTemplate, ...]) -> dict[str, tuple[WhatsAppTemplate, ...]]:
    """The configured templates by name (one per language)."""
    found: dict[str, tuple[WhatsAppTemplate, ...]] = {}
    for template in templates:
        found[template.name] = (*found.get(template.name, ()), template)
    return found
