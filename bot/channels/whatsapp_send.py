"""What a delivery becomes on WhatsApp: free-form inside the 24-hour window, a template outside it, or held.

Inside the window (24 hours from the person's last message) a delivery goes as text, or as interactive
reply buttons when it has at most 3 of at most 20 characters (more go as a list in the text, which lint
warns about). Outside it only an approved template may go: a nurture step's `whatsapp_template`, with its
rendered parameters; a marketing template only to a lead who opted in to WhatsApp marketing. Anything else
is held back with the reason, which `kindling lead show`, the console and the flow report show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.delivery.channel import buttons_as_text
from flows.channel_consent import marketing_block
from flows.whatsapp_rules import MAX_BUTTON_CHARS, MAX_BUTTONS, WhatsAppTemplate
from storage.models import Delivery, Lead

OUTSIDE_WINDOW = "outside WhatsApp's 24-hour window; the step has no template"
OPERATOR_OUTSIDE = "outside WhatsApp's 24-hour window: only an approved template may go (the console sends them)"
MAX_BODY = 4096  # characters of a text message (1024 of an interactive one's body)
MAX_INTERACTIVE_BODY = 1024


def message(
    delivery: Delivery, inside: bool, lead: Lead, templates: Mapping[str, tuple[WhatsAppTemplate, ...]]
) -> dict[str, Any] | str:
    """The Graph API message for a delivery, or why it is held back."""
    if inside and not (delivery.template and delivery.kind == "operator"):  # an operator's chosen template goes as one
        return free_form(delivery)
    if not delivery.template:
        return OUTSIDE_WINDOW if delivery.kind == "nurture" else OPERATOR_OUTSIDE
    known = templates.get(delivery.template["name"], ())
    language = delivery.template.get("language")
    template = next((t for t in known if language in (None, t.language)), None)
    category = template.category if template is not None else "marketing"  # unknown: treated as the strictest
    if category == "marketing" and (blocked := marketing_block(lead, "whatsapp")):
        return f"a marketing template needs WhatsApp consent: {blocked}"
    language = language or (template.language if template else "en_US")
    return template_message(delivery.address, delivery.template, language)


def free_form(delivery: Delivery) -> dict[str, Any]:
    """Text, or interactive reply buttons when WhatsApp can show them."""
    labels = [button["text"] for button in delivery.buttons if button.get("type", "reply") == "reply"]
    fits = labels and len(labels) <= MAX_BUTTONS and all(len(label) <= MAX_BUTTON_CHARS for label in labels)
    if not fits or len(delivery.text) > MAX_INTERACTIVE_BODY:
        text = buttons_as_text(delivery.text, delivery.buttons)[:MAX_BODY]
        return _base(delivery.address, "text", {"preview_url": False, "body": text})
    buttons = [{"type": "reply", "reply": {"id": label, "title": label}} for label in labels]
    interactive = {"type": "button", "body": {"text": delivery.text}, "action": {"buttons": buttons}}
    return _base(delivery.address, "interactive", interactive)


def template_message(to: str, template: Mapping[str, Any], language: str) -> dict[str, Any]:
    """A template message with its body parameters."""
    body: dict[str, Any] = {"name": template["name"], "language": {"code": language}}
    parameters = template.get("parameters") or []
    if parameters:
        body["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}]
    return _base(to, "template", body)


def _base(to: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": kind, kind: content}
