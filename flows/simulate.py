"""`kindling simulate`: the timeline a hypothetical lead would get from a flow, without sending or storing.

It applies what the engine applies: step delays in the lead's time zone, `when` skips, exits on reply,
opt-out and stage, step actions on the stage, quiet hours and the daily cap (this flow's sends only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from flows.durations import parse_delay
from flows.engine import REPLIES
from flows.reach import LIVE_WINDOW, WINDOW, EmailPolicy, Route, choose
from flows.render import RenderError, render_step
from flows.safety import Policy, local_day_start
from flows.samples import BLANK_EVENT
from flows.spec import EVENT_TRIGGERS, FlowSpec, StepSpec
from flows.stages import Stages

_FIELDS = ("text", "path", "url", "value", "channel", "properties")
_KINDS = (*EVENT_TRIGGERS, "opt_out", "stage")


@dataclass(frozen=True)
class Happening:
    """Something the hypothetical lead does `after` the enrollment: an event (with its fields), opt out, or a stage."""

    at: datetime
    type: str
    stage: str | None = None
    name: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def event(self) -> dict[str, Any]:
        """What exits and stage rules see as `event`, every key present."""
        kind = "stage_changed" if self.type == "stage" else self.type
        return {**BLANK_EVENT, "type": kind, "name": self.name, **self.fields}


def happenings(raw: list[dict], start: datetime) -> list[Happening]:
    """Read `[{"after": "2d", "type": "message", "text": "Hi"}, {"after": "5d", "type": "custom:purchase",
    "properties": {"amount": 49}}, {"after": "6d", "type": "stage", "to": "sql"}]`."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValueError('--events must be a JSON list of objects like [{"after": "2d", "type": "message"}]')
    return sorted((_happening(item, start) for item in raw), key=lambda happening: happening.at)


def _happening(item: dict, start: datetime) -> Happening:
    given = item.get("type")
    kind, colon, name = str(given).partition(":")
    if kind not in _KINDS or (colon and (kind != "custom" or not name)):
        uses = f"{', '.join(_KINDS[:-2])}, custom:<name> (like custom:purchase), opt_out or stage (with 'to')"
        raise ValueError(f"event type {given!r}: use {uses}")
    if kind == "stage" and not isinstance(item.get("to"), str):
        raise ValueError('a stage event needs the stage it reaches: {"after": "5d", "type": "stage", "to": "sql"}')
    unknown = sorted(set(item) - {"after", "type", "name", "to", *_FIELDS})
    if unknown:
        raise ValueError(f"event {given!r}: unknown key(s) {', '.join(unknown)} (an event has {', '.join(_FIELDS)})")
    if not isinstance(item.get("properties", {}), dict):
        raise ValueError(f"event {given!r}: 'properties' must be an object")
    fields = {key: item[key] for key in _FIELDS if key in item}
    name = name or item.get("name")
    return Happening(parse_delay(str(item.get("after", "0m"))).due(start), kind, item.get("to"), name, fields)


@dataclass(frozen=True)
class Entry:
    """One line of a simulated timeline: a step, something the lead does, an exit, or the end.

    `at` is in the lead's time zone. `kind` is `step`, `lead`, `exit` (the flow ends for the lead) or `end`
    (the flow is done, or the simulation stops). For a step, `outcome` is the message's start or why it is not
    sent, `held` why it went later than due, and `channel` the channel it takes and why.
    """

    at: datetime
    kind: str
    outcome: str
    step: str | None = None
    channel: str = ""
    held: tuple[str, ...] = ()
    skipped: bool = False

    @property
    def line(self) -> str:
        """The entry as `kindling simulate` prints it."""
        if self.kind == "step":
            note = f"  (held back: {', '.join(self.held)})" if self.held else ""
            return f"{self.at:%a %Y-%m-%d %H:%M %Z}  {self.step}: {self.outcome}{note}  [{self.channel}]"
        if self.kind == "lead":
            return f"{self.at:%a %Y-%m-%d %H:%M %Z}  lead: {self.outcome}"
        if self.kind == "exit":
            return f"{'':>24}  {self.outcome}"
        return self.outcome


def simulate(
    spec: FlowSpec,
    ctx: dict[str, Any],
    start: datetime,
    days: int,
    events: list[Happening],
    policy: Policy,
    stages: Stages,
    email: EmailPolicy | None = None,
    consent: bool = True,
    locale: str | None = None,
) -> list[str]:
    """One line per step (and per lead event), in the lead's local time, with the channel it takes and why.

    The arguments are `simulate_entries`'s.
    """
    entries = simulate_entries(spec, ctx, start, days, events, policy, stages, email, consent, locale)
    return [entry.line for entry in entries]


def simulate_entries(
    spec: FlowSpec,
    ctx: dict[str, Any],
    start: datetime,
    days: int,
    events: list[Happening],
    policy: Policy,
    stages: Stages,
    email: EmailPolicy | None = None,
    consent: bool = True,
    locale: str | None = None,
) -> list[Entry]:
    """The timeline a made-up lead enrolled at `start` would get over `days` days, as entries in order.

    Args:
        spec: the flow.
        ctx: what steps render with: `lead` (flows.samples.sample_lead), `event`, `now`, `flow`, `step`.
        start: the enrollment, an aware datetime.
        days: how long to simulate.
        events: what the lead does (`happenings(...)`), in time order.
        policy: quiet hours, daily cap and default time zone (`settings.policy`).
        stages: the funnel's stages and rules (`settings.stages`).
        email: whether nurture email is on and needs consent.
        consent: whether the lead gave email consent.
        locale: the language the lead gets (a code), for steps with a variant in it.

    Returns:
        The entries; the last is an `exit` or an `end`. The lead came from its first touch's channel and is on it
        (the widget open) for LIVE_WINDOW after it enrolls or replies, gone after that.
    """
    lead, zone = dict(ctx["lead"]), policy.zone(ctx["lead"].get("timezone"))
    end, due, sent_days, entries = start + timedelta(days=days), start, [], []
    pending, active, last = list(events), start, start
    for name in spec.step_names:
        step = spec.step_for(name, lead["id"], locale)
        due = step.delay.due(due, lead.get("timezone"))
        sent_at, held = _send_time(due, sent_days, policy, zone)
        while pending and pending[0].at <= (sent_at if due <= end else due):  # what the lead does first comes first
            happening = pending.pop(0)
            moved, reason = _exit(spec, stages, lead, happening)
            moves = f"; moves to stage {moved}" if moved and happening.type != "stage" else ""
            at = happening.at.astimezone(zone)
            entries.append(Entry(at, "lead", f"{_describe(happening)}{moves}"))
            active = happening.at if happening.type in REPLIES else active
            if reason is not None:
                return [*entries, Entry(at, "exit", f"exits the flow ({reason})")]
        if due > end:
            ending = f"(the simulation ends after {days} days; next step {name!r} would be due later)"
            return [*entries, Entry(end.astimezone(zone), "end", ending)]
        outcome, skipped = _outcome(spec, step, {**ctx, "lead": lead})
        online = sent_at - active <= LIVE_WINDOW
        channel = _channel(step, lead, online, email or EmailPolicy(), consent, active, sent_at)
        if channel.startswith("whatsapp:"):
            channel += f"; {whatsapp_window(step, sent_at - active)}"
        elif channel.startswith(("messenger:", "instagram:")):
            channel += f"; {messenger_window(channel.split(':')[0], sent_at - active)}"
        last = sent_at.astimezone(zone)
        entries.append(Entry(last, "step", outcome, name, channel, held, skipped))
        if step.action is not None and step.action.kind == "stage":
            lead["stage"] = step.action.value
        if step.action is not None and step.action.kind in ("exit", "handoff"):
            return [*entries, Entry(last, "exit", f"the flow ends ({step.action.kind})")]
        sent_days.append(local_day_start(sent_at, zone))
    return [*entries, Entry(last.astimezone(zone), "end", "the flow is done")]


def _send_time(due: datetime, sent_days: list[datetime], policy: Policy, zone) -> tuple[datetime, tuple[str, ...]]:  # type: ignore[no-untyped-def]
    """When the dispatcher would let it out, and why later than due."""
    at, notes = due, []
    for _ in range(30):
        local = at.astimezone(zone)
        if policy.quiet_hours is not None and policy.quiet_hours.contains(local):
            at, notes = policy.quiet_hours.ends_after(local), [*notes, "quiet hours"]
        elif sent_days.count(local_day_start(at, zone)) >= policy.daily_cap:
            at, notes = local_day_start(at, zone) + timedelta(days=1), [*notes, "daily cap"]
        else:
            break
    return at, tuple(dict.fromkeys(notes))


def _outcome(spec: FlowSpec, step: StepSpec, ctx: dict[str, Any]) -> tuple[str, bool]:
    """What the step does for the lead, and whether it is skipped (`when` false, or a render error)."""
    if step.when is not None and not step.when.holds(**ctx):
        return f"skipped, when={step.when.source!r} is false", True
    try:
        text = render_step(spec, step.name, step.variant, ctx, step.locale).text
    except RenderError as exc:
        return f"not sent, render error: {exc}", True
    action = f" -> {step.action.kind}" if step.action else ""
    return (repr(text[:70] + ("..." if len(text) > 70 else "")) if text else "(no message)") + action, False


def _channel(
    step: StepSpec, lead: dict, online: bool, email: EmailPolicy, consent: bool, since: datetime, at: datetime
) -> str:
    """The channel the step would take at `at` for the made-up lead who last wrote at `since` (`flows.reach.choose`)."""
    came_from = (lead.get("first_touch") or {}).get("channel") or "webchat"
    conversation = SimpleNamespace(id=1, channel=came_from, last_message_at=since, created_at=since)
    person = SimpleNamespace(
        email=lead.get("email"),
        email_bounced_at=None,
        email_opted_out_at=None,
        email_consent_at=since if consent else None,
    )
    template = step.whatsapp is not None
    route = choose(step.channels, person, [conversation], {1} if online else set(), email, at, template)
    return f"{route.channel}: {route.why}" if isinstance(route, Route) else f"not sent: {route}"


def whatsapp_window(step: StepSpec, since_last_message: timedelta) -> str:
    """How a step goes on WhatsApp this long after the lead's last message: free-form, as its template, or held."""
    if since_last_message < WINDOW:
        return "inside the 24-hour window: free-form"
    if step.whatsapp is not None:
        return f"window closed: goes as template {step.whatsapp.name!r}"
    return "held back: outside WhatsApp's 24-hour window; the step has no template"


def messenger_window(channel: str, since_last_message: timedelta) -> str:
    """How a step goes on Messenger or Instagram this long after the lead's last message: sent, or held back."""
    if since_last_message < WINDOW:
        return "inside the 24-hour window"
    return f"held back: outside {channel.capitalize()}'s 24-hour window"


def _exit(spec: FlowSpec, stages: Stages, lead: dict, happening: Happening) -> tuple[str | None, str | None]:
    """(the stage the lead moves to, why the flow ends), as the engine decides on the event; updates `lead`."""
    if happening.type == "opt_out":
        return None, "opt_out"
    event = happening.event()
    if happening.type == "stage":
        moved = happening.stage
    else:
        rule = stages.advance(lead["stage"], lead, event)
        moved = rule.stage if rule is not None else None
    lead["stage"] = moved or lead["stage"]
    if happening.type in REPLIES and spec.exits_on("reply"):
        return moved, "reply"
    seen = [(event["type"], event["name"], None)] + ([("stage_changed", None, moved)] if moved else [])
    for rule in spec.exits:
        if any(rule.matches_event(*kinds) for kinds in seen):
            return moved, rule.source
    for rule in spec.exits:
        if rule.stage_reached(stages, lead["stage"]):
            return moved, rule.source
        if rule.expression is not None and rule.expression.holds(lead=lead, event=event, now=happening.at):
            return moved, rule.source
    return moved, None


def _describe(happening: Happening) -> str:
    fields = happening.fields
    what = {
        "message": f"replies {fields['text']!r}" if fields.get("text") else "replies",
        "opt_out": "says stop",
        "stage": f"reaches stage {happening.stage}",
        "page_view": f"views {fields.get('path') or fields.get('url') or 'a page'}",
        "button": f"presses {fields.get('value') or fields.get('text') or 'a button'!r}",
        "custom": f"custom event {happening.name or '(no name)'}",
    }.get(happening.type, happening.type.replace("_", " "))
    properties = fields.get("properties")
    return f"{what} {json.dumps(properties)}" if properties else what
