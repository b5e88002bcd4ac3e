"""The flow report: per flow its enrollments and goal; per step what was sent, skipped and answered; A/B variants."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import case, func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.reports.period import Query, ReportError
from bot.reports.stats import compare_variants
from flows.library import FlowLibrary
from storage.models import Delivery, Enrollment, Event

RULE = (
    "Flow counts: enrollments that began in the period. Step counts: steps that came due in the period. "
    "Reached: sent messages the channel says the lead has (delivered or seen); seen: shown on the lead's screen "
    "(the widget tells, Telegram does not). A reply, button press, handoff or opt-out counts for the last nurture "
    "message sent to the lead in the 24 hours before it, once per message. A lead reached the goal when it first got "
    "to the flow's goal stage while in the flow or within 7 days after it ended. Variants compare leads sent each "
    "variant."
)
STEP_COUNTS = (
    "sent", "reached", "seen", "waiting", "skipped", "failed", "replied_24h", "buttons", "handed_off", "opted_out",
)  # fmt: skip


async def flows(session: AsyncSession, library: FlowLibrary, query: Query) -> dict[str, Any]:
    """Every flow with enrollments or steps in the period (and every loaded flow), by slug."""
    if query.by is not None:
        raise ReportError("the flow report is per flow and step; 'by' splits only the funnel and handoff reports")
    enrolled = await _enrollments(session, query)
    steps, variants = await _steps(session, query)
    await _skipped_steps(session, query, steps)
    slugs = sorted(set(library.flows) | set(enrolled) | set(steps))
    rows = [_flow(slug, library, enrolled.get(slug), steps.get(slug, {}), variants.get(slug, {})) for slug in slugs]
    return {
        "report": "flows",
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "by": None,
        "rule": RULE,
        "flows": rows,
    }


def _flow(slug: str, library: FlowLibrary, enrolled: dict | None, steps: dict, variants: dict) -> dict[str, Any]:
    spec = library.flows.get(slug)
    counts = enrolled or {"enrolled": 0, "active": 0, "done": 0, "exited": {}, "handed_off": 0, "reached_goal": 0}
    order = list(spec.step_names) if spec else []
    order += sorted({step for step, _ in steps} - set(order))
    keys = sorted(steps, key=lambda key: (order.index(key[0]), key[1] or ""))
    rows = [{"step": step, "variant": variant, **steps[(step, variant)]} for step, variant in keys]
    goal = spec.goal if spec else None
    return {
        "flow": slug,
        "name": spec.name if spec else None,
        "goal": goal,
        **counts,
        "opted_out": counts["exited"].get("opt_out", 0),
        "goal_conversion": round(counts["reached_goal"] / counts["enrolled"], 4) if counts["enrolled"] else None,
        "steps": rows,
        "variants": [_variant_block(step, variants[step], goal is not None) for step in order if step in variants],
    }


async def _enrollments(session: AsyncSession, query: Query) -> dict[str, dict[str, Any]]:
    statement = (
        select(
            Enrollment.flow_slug,
            Enrollment.status,
            Enrollment.exit_reason,
            func.count(),
            func.count(Enrollment.handed_off_at),
            func.count(Enrollment.goal_reached_at),
        )
        .where(Enrollment.enrolled_at >= query.since, Enrollment.enrolled_at < query.until)
        .group_by(Enrollment.flow_slug, Enrollment.status, Enrollment.exit_reason)
    )
    found: dict[str, dict[str, Any]] = {}
    for slug, status, reason, count, handed_off, goal in await session.exec(statement):
        flow = found.setdefault(
            slug, {"enrolled": 0, "active": 0, "done": 0, "exited": {}, "handed_off": 0, "reached_goal": 0}
        )
        flow["enrolled"] += count
        flow["handed_off"] += handed_off
        flow["reached_goal"] += goal
        if status in ("active", "paused"):
            flow["active"] += count
        elif status == "done":
            flow["done"] += count
        else:
            flow["exited"][reason or "unknown"] = flow["exited"].get(reason or "unknown", 0) + count
    return found


def _blank_step() -> dict[str, Any]:
    return {**dict.fromkeys(STEP_COUNTS, 0), "skip_reasons": {}}


async def _steps(session: AsyncSession, query: Query) -> tuple[dict, dict]:
    """Nurture deliveries by flow, step and variant: what happened to them and what the lead did next.

    Also the A/B figures per flow and step (leads sent each variant, how many answered within 24 h, how
    many reached the goal), from the same scan: an enrollment gets each step once, so the variant's sent
    deliveries are its leads. Goals are looked up in a hashed set of the enrollments that reached theirs.
    """
    why = case((Delivery.status == "skipped", Delivery.last_error), else_=None)
    reached = select(Enrollment.id).where(Enrollment.goal_reached_at.is_not(None))
    ab = Delivery.variant.is_not(None) & (Delivery.status == "sent")  # only these rows are looked up
    answered = ab & ((Delivery.replied_at.is_not(None)) | (Delivery.button_at.is_not(None)))
    statement = (
        select(
            Delivery.flow_slug,
            Delivery.step,
            Delivery.variant,
            Delivery.status,
            why,
            func.count(),
            func.count(func.coalesce(Delivery.delivered_at, Delivery.seen_at)),
            func.count(Delivery.seen_at),
            func.count(Delivery.replied_at),
            func.count(Delivery.button_at),
            func.count(Delivery.handed_off_at),
            func.count(Delivery.opted_out_at),
            func.count(case((answered, 1))),
            func.count(case((ab & Delivery.enrollment_id.in_(reached), 1))),
        )
        .where(Delivery.kind == "nurture", Delivery.created_at >= query.since, Delivery.created_at < query.until)
        .group_by(Delivery.flow_slug, Delivery.step, Delivery.variant, Delivery.status, why)
    )
    found: defaultdict[str, dict[tuple, dict[str, Any]]] = defaultdict(dict)
    variants: defaultdict[str, defaultdict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in await session.exec(statement):
        slug, step, variant, status, reason, count = row[:6]
        reached, seen, replied, buttons, handed_off, opted_out, responded, goal = row[6:]
        counts = found[slug].setdefault((step, variant), _blank_step())
        outcome = {"sent": "sent", "skipped": "skipped", "dead": "failed"}.get(status, "waiting")
        counts[outcome] += count
        if outcome == "skipped":
            _add_reason(counts, reason, count)
        for name, value in (("reached", reached), ("seen", seen), ("replied_24h", replied), ("buttons", buttons),
                            ("handed_off", handed_off)):  # fmt: skip
            counts[name] += value
        counts["opted_out"] += opted_out
        if variant is not None and status == "sent":
            block = {"variant": variant, "leads": count, "responded": responded, "reached_goal": goal}
            variants[slug][step].append(block)
    return found, variants


async def _skipped_steps(session: AsyncSession, query: Query, found: dict) -> None:
    """Steps skipped before anything was queued (`when` false, render error, no channel), from their events."""
    flow, step, variant, reason = (Event.payload[key].as_string() for key in ("flow", "step", "variant", "reason"))
    statement = (
        select(flow, step, variant, reason, func.count())
        .where(Event.type == "step_skipped", Event.at >= query.since, Event.at < query.until)
        .group_by(flow, step, variant, reason)
    )
    for slug, name, variant, why, count in await session.exec(statement):
        row = found.setdefault(slug, {}).setdefault((name, variant), _blank_step())
        row["skipped"] += count
        _add_reason(row, why, count)


def _add_reason(row: dict[str, Any], reason: str | None, count: int) -> None:
    """Reasons grouped by what comes before their details: `render error: file:3: ...` is a render error."""
    label = (reason or "unknown").split(":", 1)[0].strip() or "unknown"
    row["skip_reasons"][label] = row["skip_reasons"].get(label, 0) + count


def _variant_block(step: str, variants: list[dict[str, Any]], has_goal: bool) -> dict[str, Any]:
    """One A/B step: its variants side by side, and a plain note on whether they differ.

    The note compares reaching the flow's goal; for a flow without a goal, answering within 24 h.
    """
    for variant in variants:
        leads = variant["leads"]
        variant["response_rate"] = round(variant["responded"] / leads, 4) if leads else None
        variant["conversion"] = round(variant["reached_goal"] / leads, 4) if leads else None
    variants.sort(key=lambda variant: variant["variant"])
    metric = "reached_goal" if has_goal else "responded"
    note = compare_variants([(v["variant"], v["leads"], v[metric]) for v in variants])
    return {"step": step, "compared_on": metric, "variants": variants, "note": note}
