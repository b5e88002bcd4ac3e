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
    "A reply, button press, handoff or opt-out counts for the last nurture message sent to the lead in the "
    "24 hours before it, once per message. A lead reached the goal when it first got to the flow's goal "
    "stage while in the flow or within 7 days after it ended. Variants compare leads sent each variant."
)
STEP_COUNTS = ("sent", "waiting", "skipped", "failed", "replied_24h", "buttons", "handed_off", "opted_out")


async def flows(session: AsyncSession, library: FlowLibrary, query: Query) -> dict[str, Any]:
    """Every flow with enrollments or steps in the period (and every loaded flow), by slug."""
    if query.by is not None:
        raise ReportError("the flow report is per flow and step; 'by' splits only the funnel and handoff reports")
    enrolled = await _enrollments(session, query)
    steps = await _steps(session, query)
    await _skipped_steps(session, query, steps)
    variants = await _variants(session, query)
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


async def _steps(session: AsyncSession, query: Query) -> dict[str, dict[tuple, dict[str, Any]]]:
    """Nurture deliveries by flow, step and variant: what happened to them and what the lead did next."""
    why = case((Delivery.status == "skipped", Delivery.last_error), else_=None)
    statement = (
        select(
            Delivery.flow_slug,
            Delivery.step,
            Delivery.variant,
            Delivery.status,
            why,
            func.count(),
            func.count(Delivery.replied_at),
            func.count(Delivery.button_at),
            func.count(Delivery.handed_off_at),
            func.count(Delivery.opted_out_at),
        )
        .where(Delivery.kind == "nurture", Delivery.created_at >= query.since, Delivery.created_at < query.until)
        .group_by(Delivery.flow_slug, Delivery.step, Delivery.variant, Delivery.status, why)
    )
    found: defaultdict[str, dict[tuple, dict[str, Any]]] = defaultdict(dict)
    for slug, step, variant, status, reason, count, replied, buttons, handed_off, opted_out in await session.exec(
        statement
    ):
        row = found[slug].setdefault((step, variant), _blank_step())
        outcome = {"sent": "sent", "skipped": "skipped", "dead": "failed"}.get(status, "waiting")
        row[outcome] += count
        if outcome == "skipped":
            _add_reason(row, reason, count)
        for name, value in (("replied_24h", replied), ("buttons", buttons), ("handed_off", handed_off)):
            row[name] += value
        row["opted_out"] += opted_out
    return found


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


async def _variants(session: AsyncSession, query: Query) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per A/B step: leads sent each variant, how many answered within 24 h, how many reached the goal."""
    answered = case(((Delivery.replied_at.is_not(None)) | (Delivery.button_at.is_not(None)), Delivery.enrollment_id))
    goal = case((Enrollment.goal_reached_at.is_not(None), Enrollment.id))
    statement = (
        select(
            Delivery.flow_slug,
            Delivery.step,
            Delivery.variant,
            func.count(Delivery.enrollment_id.distinct()),
            func.count(answered.distinct()),
            func.count(goal.distinct()),
        )
        .join(Enrollment, Enrollment.id == Delivery.enrollment_id)
        .where(
            Delivery.kind == "nurture",
            Delivery.variant.is_not(None),
            Delivery.status == "sent",
            Delivery.created_at >= query.since,
            Delivery.created_at < query.until,
        )
        .group_by(Delivery.flow_slug, Delivery.step, Delivery.variant)
    )
    found: defaultdict[str, defaultdict[str, list]] = defaultdict(lambda: defaultdict(list))
    for slug, step, variant, leads, responded, reached in await session.exec(statement):
        found[slug][step].append({"variant": variant, "leads": leads, "responded": responded, "reached_goal": reached})
    return found


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
