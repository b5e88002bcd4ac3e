"""A flow as a picture: its steps on a day axis, as SVG text drawn on the server (no database, no framework).

`flow_svg` draws a flow file for a lead enrolled at a reference moment: each step at its due time, its wait,
`when` steps as skippable (with the dashed way around them), actions that end the flow, the flow's exits, the
quiet hours shaded night by night, and under each step its reach figures from the flow report when given.
`simulation_svg` draws one made-up lead's timeline from `flows.simulate.simulate_entries` the same way.

The axis is a square-root scale of days, so a 7-touches-in-7-days flow and a 90-day flow both read.
Every text is escaped: names, conditions and messages come from marketers and leads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from markupsafe import escape

from flows.durations import zone as time_zone
from flows.safety import QuietHours
from flows.simulate import Entry
from flows.spec import FlowSpec, StepSpec

WIDTH = 960
LEFT, RIGHT = 16, 28
COLUMN = 330  # the steps' names and figures, left of the day axis, so no line crosses a text
PLOT = LEFT + COLUMN + 24  # where day 0 is
CHARS = int(COLUMN / 6.4)  # characters that fit in the column
AXIS_Y = 44  # the day axis; rows of steps below it
ROW = 30  # pixels per step, and 14 more per line under it (its condition, reach figures)
LONGEST = 64  # characters of a label; longer ones are cut (the whole text is in the mark's tooltip)
TICKS = (0, 0.25, 0.5, 1, 2, 3, 4, 5, 6, 7, 10, 14, 21, 30, 45, 60, 90, 120, 180, 270, 365, 730)
ENDING = ("handoff", "exit")  # step actions after which the flow is over for the lead
MONDAY = date(2026, 1, 5)  # flow pictures show a lead enrolled on a Monday at noon

STYLE = """
text { font: 12px system-ui, -apple-system, 'Segoe UI', sans-serif; fill: #1f2933; }
.frame { fill: #fff; stroke: #e4e7eb; }
.axis line, .axis path { stroke: #9aa5b1; }
.axis text { fill: #52606d; font-size: 11px; }
.quiet { fill: #1f3a5f; fill-opacity: 0.08; }
.guide { stroke: #cbd2d9; stroke-dasharray: 2 3; }
.leader { stroke: #d9e2ec; stroke-dasharray: 1 3; }
.path { stroke: #3e7bd6; stroke-width: 2; fill: none; }
.bypass { stroke: #d97706; stroke-width: 1.5; stroke-dasharray: 5 4; fill: none; }
.step circle { fill: #3e7bd6; stroke: #fff; stroke-width: 2; }
.step.skippable circle, .step.skipped circle { fill: #fff; stroke: #d97706; stroke-dasharray: 3 2; }
.step rect.end, .exit rect.end { fill: #c2410c; }
.name { font-weight: 600; }
.wait { fill: #52606d; }
.when { fill: #b45309; }
.reach, .outcome { fill: #334e68; font-size: 11px; }
.channel, .note { fill: #52606d; font-size: 11px; }
.held { fill: #9b2c2c; font-size: 11px; }
.lead-event path { fill: #16a34a; }
.end circle { fill: #52606d; }
.exits rect { fill: #fff4e5; stroke: #f0b37e; }
.exits text { fill: #7c2d12; font-size: 11px; }
"""


@dataclass(frozen=True)
class Mark:
    """One row of the picture: a step (or a lead's event, an exit, the end) at a day since enrollment."""

    day: float
    kind: str  # step | lead-event | exit | end
    name: str
    text: str  # the wait, the outcome, or what happened
    details: tuple[tuple[str, str], ...] = ()  # (class, line) under the row: reach figures, held back
    when: str | None = None  # the condition that may skip it
    skipped: bool = False
    action: str | None = None
    tip: str = ""


def flow_svg(
    spec: FlowSpec,
    reach: Mapping[str, Mapping[str, Any]] | None = None,
    quiet_hours: QuietHours | None = None,
    timezone: str = "UTC",
    start: datetime | None = None,
) -> str:
    """The flow's steps on a day axis, as an `<svg>` element.

    Args:
        spec: the flow.
        reach: per step name, its figures (`step_reach` of the flow report's row); None draws none.
        quiet_hours: the nights shaded (`settings.policy.quiet_hours`); None: no quiet hours.
        timezone: where the reference lead lives (`settings.policy.default_timezone`).
        start: when the reference lead enrolls; by default a Monday at 12:00 in `timezone`.
    """
    zone = time_zone(timezone)
    start = start or datetime.combine(MONDAY, time(12), tzinfo=zone)
    marks, due = [], start
    for name in spec.step_names:
        step = spec.variants(name)[0]
        due = step.delay.due(due, timezone)
        marks.append(_step_mark(spec, step, (due - start) / timedelta(days=1), reach, quiet_hours, due, zone))
    caption = f"A lead enrolled {start.astimezone(zone):%A %H:%M %Z}; days since enrollment"
    exits = [rule.source for rule in spec.exits]
    return _svg(spec.name, marks, start.astimezone(zone), _span(marks), quiet_hours, exits, caption)


def simulation_svg(entries: Sequence[Entry], start: datetime, quiet_hours: QuietHours | None = None) -> str:
    """One made-up lead's simulated timeline (`flows.simulate.simulate_entries`), as an `<svg>` element.

    Args:
        entries: the simulation's entries, in order; their times are in the lead's time zone.
        start: when the lead enrolled (the `start` given to `simulate_entries`).
        quiet_hours: the nights shaded, in the lead's time zone (`settings.policy.quiet_hours`).

    The axis ends where the simulation ends: at an exit, the flow's end, or the simulated days.
    """
    local = start.astimezone(entries[0].at.tzinfo) if entries else start
    marks = [_entry_mark(entry, (entry.at - start) / timedelta(days=1)) for entry in entries]
    caption = f"A made-up lead enrolled {local:%a %Y-%m-%d %H:%M %Z}; days since enrollment"
    span = max((mark.day for mark in marks), default=0.0)
    return _svg("Simulated timeline", marks, local, max(span, 1 / 24), quiet_hours, [], caption)


def step_reach(flow_row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per step name, the flow report's figures (`bot.reports.flowreport`) with its A/B variants added up."""
    found: dict[str, dict[str, Any]] = {}
    for row in flow_row.get("steps", ()):
        total = found.setdefault(row["step"], {"skip_reasons": {}})
        for key, value in row.items():
            if isinstance(value, int) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
        for why, count in row.get("skip_reasons", {}).items():
            total["skip_reasons"][why] = total["skip_reasons"].get(why, 0) + count
    return found


def reach_lines(figures: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A step's figures as the picture writes them: sent, delivered, seen, replied; then what was held back."""
    answered = figures.get("replied_24h", 0) + figures.get("buttons", 0)
    sent = (
        f"{figures.get('sent', 0)} sent · {figures.get('reached', 0)} delivered · {figures.get('seen', 0)} seen · "
        f"{answered} replied"
    )
    extra = [f"{figures[key]} {key}" for key in ("waiting", "failed") if figures.get(key)]
    lines = [("reach", " · ".join([sent, *extra]))]
    reasons = figures.get("skip_reasons") or {}
    if reasons:
        why = ", ".join(f"{reason} ({count})" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]))
        lines.append(("held", f"held back or skipped: {why}"))
    return tuple(lines)


def _step_mark(
    spec: FlowSpec,
    step: StepSpec,
    day: float,
    reach: Mapping[str, Mapping[str, Any]] | None,
    quiet_hours: QuietHours | None,
    due: datetime,
    zone: Any,
) -> Mark:
    wait = f"+{step.delay.source}" + (f" at {step.delay.at:%H:%M}" if step.delay.at else "")
    local = due.astimezone(zone)
    facts, notes = [wait, f"{local:%a %H:%M}"], []
    action = step.action
    if action is not None:
        facts.append(f"→ {action.kind}" + (f":{action.value}" if action.value is not None else ""))
    if quiet_hours is not None and quiet_hours.contains(local):
        notes.append(f"waits for quiet hours to end ({quiet_hours.end:%H:%M})")
    variants = [block.variant for block in spec.variants(step.name) if block.variant]
    if variants:
        notes.append("A/B: " + ", ".join(variants))
    if step.channels:
        notes.append("on " + " or ".join(step.channels))
    details = ((("note", " · ".join(notes)),) if notes else ()) + (
        reach_lines(reach.get(step.name, {})) if reach is not None else ()
    )
    when = step.when.source if step.when is not None else None
    kind = action.kind if action is not None and action.kind in ENDING else None
    tip = "  ".join([*facts, *notes])
    return Mark(day, "step", step.name, "  ".join(facts), details, when, action=kind, tip=tip)


def _entry_mark(entry: Entry, day: float) -> Mark:
    when = f"{entry.at:%a %H:%M}"
    if entry.kind == "step":
        held = f" (held back: {', '.join(entry.held)})" if entry.held else ""
        lines = (("held" if entry.skipped else "outcome", entry.outcome), ("channel", entry.channel.split(";")[0]))
        return Mark(day, "step", entry.step or "", when + held, lines, skipped=entry.skipped, tip=entry.line)
    kind = {"lead": "lead-event", "exit": "exit"}.get(entry.kind, "end")
    name = {"lead-event": "lead", "exit": "exit"}.get(kind, "end")
    return Mark(day, kind, name, f"{when}  {entry.outcome}", tip=entry.outcome)


def _span(marks: Sequence[Mark]) -> float:
    """The axis's last day: the first tick at or past the last mark (a day at least)."""
    last = max((mark.day for mark in marks), default=0.0)
    return next((tick for tick in TICKS if tick >= max(last, 1)), max(last, 1))


def _svg(
    title: str,
    marks: Sequence[Mark],
    start: datetime,
    span: float,
    quiet_hours: QuietHours | None,
    exits: Sequence[str],
    caption: str,
) -> str:
    scale = _Scale(span)
    rows, y = [], AXIS_Y + 30
    for mark in marks:
        rows.append(y)
        y += ROW + 14 * (len(mark.details) + (mark.when is not None))
    height = y + (46 if exits else 16)
    parts = [
        f'<svg class="flow-timeline" xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style>",
        f'<rect class="frame" width="{WIDTH}" height="{height}" rx="4"/>',
        *_quiet(scale, start, quiet_hours, AXIS_Y, y - AXIS_Y),
        *_axis(scale, caption),
        *_paths(scale, marks, rows),
        *(_mark(scale, mark, row) for mark, row in zip(marks, rows, strict=True)),
        *_exits(exits, y + 8),
        "</svg>",
    ]
    return "\n".join(parts)


class _Scale:
    """Days to pixels on a square-root scale from 0 to `span` days."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.width = WIDTH - PLOT - RIGHT

    def x(self, day: float) -> float:
        return round(PLOT + self.width * math.sqrt(max(0.0, min(day, self.span)) / self.span), 1)


def _quiet(scale: _Scale, start: datetime, hours: QuietHours | None, top: float, height: float) -> list[str]:
    """One shaded band per night of quiet hours on the axis, in the lead's time zone."""
    if hours is None:
        return []
    bands, zone = [], start.tzinfo or UTC
    for offset in range(-1, math.ceil(scale.span) + 2):
        day = start.date() + timedelta(days=offset)
        begins = datetime.combine(day, hours.start, tzinfo=zone)
        ends = datetime.combine(day + timedelta(days=hours.end <= hours.start), hours.end, tzinfo=zone)
        left, right = (scale.x((moment - start) / timedelta(days=1)) for moment in (begins, ends))
        if right - left >= 0.5:
            bands.append(
                f'<rect class="quiet" x="{left}" y="{top}" width="{round(right - left, 1)}" height="{height}" '
                f'data-from="{begins.isoformat()}"><title>quiet hours {hours.start:%H:%M}-{hours.end:%H:%M}</title>'
                "</rect>"
            )
    return bands


def _axis(scale: _Scale, caption: str) -> list[str]:
    parts = ['<g class="axis">', f'<line x1="{PLOT}" y1="{AXIS_Y}" x2="{WIDTH - RIGHT}" y2="{AXIS_Y}"/>']
    last = -100.0
    hours = scale.span <= 3  # hours are marked on a short axis only, where whole days leave room
    for tick in (tick for tick in TICKS if tick <= scale.span and (hours or tick == 0 or tick >= 1)):
        x = scale.x(tick)
        if x - last < 34 and tick != scale.span:
            continue
        label = f"{round(tick * 24)}h" if 0 < tick < 1 else f"{tick:g}d"
        parts += [f'<line x1="{x}" y1="{AXIS_Y - 4}" x2="{x}" y2="{AXIS_Y + 4}"/>',
                  f'<text x="{x}" y="{AXIS_Y - 8}" text-anchor="middle">{label}</text>']  # fmt: skip
        last = x
    parts += [f'<text x="{PLOT}" y="14">{_e(caption)}</text>', "</g>"]
    return parts


def _paths(scale: _Scale, marks: Sequence[Mark], rows: Sequence[float]) -> list[str]:
    """The way a lead goes from step to step, and the dashed way around each step a `when` may skip."""
    points = [(scale.x(0), float(AXIS_Y)), *((scale.x(m.day), row) for m, row in zip(marks, rows, strict=True))]
    parts = [f'<line class="guide" x1="{x}" y1="{AXIS_Y}" x2="{x}" y2="{y}"/>' for x, y in points[1:]]
    line = " ".join(f"{x},{y}" for x, y in points)
    parts.append(f'<polyline class="path" points="{line}"/>')
    for index, mark in enumerate(marks):
        if mark.when is None:
            continue
        (x1, y1), (x2, y2) = points[index], points[min(index + 2, len(points) - 1)]
        if index + 2 >= len(points):  # the last step: around it is the end of the flow
            y2 += ROW / 2
        parts.append(
            f'<path class="bypass" data-skips="{_e(mark.name)}" d="M {x1} {y1} L {x1 - 10} {y2} L {x2} {y2}"/>'
        )
    return parts


def _mark(scale: _Scale, mark: Mark, y: float) -> str:
    x = scale.x(mark.day)
    classes = " ".join(
        [mark.kind] + (["skippable"] if mark.when else []) + (["skipped"] if mark.skipped else [])
        + (["ends"] if mark.action else [])
    )  # fmt: skip
    data = f' data-step="{_e(mark.name)}"' if mark.kind == "step" else ""
    head = f'<g class="{classes}"{data} data-day="{round(mark.day, 3)}" data-x="{x}"'
    head += f' data-action="{_e(mark.action)}">' if mark.action else ">"
    name = _cut(mark.name, CHARS // 2)
    first = (
        f'<text x="{LEFT}" y="{y + 4}"><tspan class="name">{_e(name)}</tspan>'
        f'<tspan class="wait" dx="8">{_e(_cut(mark.text, CHARS - len(name) - 2))}</tspan></text>'
    )
    more = ([("when", f"only if {mark.when}")] if mark.when else []) + list(mark.details)
    texts = [
        f'<text class="{cls}" x="{LEFT}" y="{y + 18 + 14 * index}">{_e(_cut(text, CHARS))}</text>'
        for index, (cls, text) in enumerate(more)
    ]
    leader = f'<line class="leader" x1="{LEFT + COLUMN}" y1="{y}" x2="{x - 8}" y2="{y}"/>'
    tip = f"<title>{_e(mark.tip or mark.text)}</title>"
    return "\n".join([head, tip, leader, _symbol(mark, x, y), first, *texts, "</g>"])


def _symbol(mark: Mark, x: float, y: float) -> str:
    if mark.kind == "lead-event":
        return f'<path d="M {x} {y - 7} L {x + 7} {y} L {x} {y + 7} L {x - 7} {y} Z"/>'
    if mark.kind == "exit" or mark.action:
        return f'<rect class="end" x="{x - 6}" y="{y - 6}" width="12" height="12"/>'
    return f'<circle cx="{x}" cy="{y}" r="{6 if mark.kind == "step" else 4}"/>'


def _exits(exits: Iterable[str], y: float) -> list[str]:
    """The flow's exits as labels along the bottom: what ends it early for a lead, between any two steps."""
    exits = list(exits)
    if not exits:
        return []
    parts, x = ['<g class="exits">', f'<text x="{LEFT}" y="{y + 16}">Leaves the flow early on:</text>'], LEFT + 150.0
    for source in exits:
        label = _cut(source, 40)
        width = 12 + 6.6 * len(label)
        parts += [f'<g class="exit" data-exit="{_e(source)}">',
                  f'<rect x="{x}" y="{y + 2}" width="{round(width, 1)}" height="20" rx="10"/>',
                  f'<text x="{round(x + width / 2, 1)}" y="{y + 16}" text-anchor="middle">{_e(label)}</text>',
                  "</g>"]  # fmt: skip
        x += width + 8
    return [*parts, "</g>"]


def _cut(text: str, longest: int = LONGEST) -> str:
    return text if len(text) <= longest else text[: longest - 1] + "…"


def _e(text: str) -> str:
    return str(escape(text))
