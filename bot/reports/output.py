"""A report as a text table, CSV or JSON: the same numbers as the API's, laid out for people or spreadsheets."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

FORMATS = ("table", "csv", "json")


def render(report: dict[str, Any], fmt: str) -> str:
    """The report in `fmt` (table, csv or json)."""
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False)
    kind = report["report"]
    if fmt == "csv":
        return _csv(*{"funnel": funnel_rows, "flows": flow_rows, "handoffs": handoff_rows}[kind](report))
    return {"funnel": funnel_table, "flows": flows_table, "handoffs": handoffs_table}[kind](report)


def duration(seconds: float | None) -> str:
    """Seconds as a person reads them: 45s, 4m 10s, 2h 5m, 3d 4h; a dash for none."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    for unit, size, smaller, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            rest = (whole % size) // small_size
            return f"{whole // size}{unit}" + (f" {rest}{smaller}" if rest else "")
    return f"{whole}s"


def percent(ratio: float | None) -> str:
    """A ratio as a percentage with one decimal; a dash when there was nothing to divide by."""
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


# --- rows for CSV (and the tables) -------------------------------------------------------------------


def funnel_rows(report: dict) -> tuple[list[str], list[list[Any]]]:
    """One row per group and stage."""
    header = [report["by"] or "group", "stage", "reached", "conversion", "overall_conversion"]
    header.append("median_seconds_in_stage")
    rows = [
        [group["key"], stage["stage"], stage["reached"], stage["conversion"], group["overall_conversion"],
         stage["median_seconds_in_stage"]]
        for group in report["groups"]
        for stage in group["stages"]
    ]  # fmt: skip
    return header, rows


FLOW_HEADER = ["flow", "step", "variant", "enrolled", "reached_goal", "goal_conversion", "sent", "reached", "seen",
               "waiting", "skipped", "failed", "replied_24h", "buttons", "handed_off", "opted_out",
               "skip_reasons"]  # fmt: skip


def flow_rows(report: dict) -> tuple[list[str], list[list[Any]]]:
    """A row per flow (its enrollments), then a row per step and variant."""
    rows = []
    for flow in report["flows"]:
        rows.append([flow["flow"], "", "", flow["enrolled"], flow["reached_goal"], flow["goal_conversion"],
                     "", "", "", "", "", "", "", "", flow["handed_off"], flow["opted_out"], ""])  # fmt: skip
        for step in flow["steps"]:
            reasons = "; ".join(f"{why}={count}" for why, count in sorted(step["skip_reasons"].items()))
            rows.append([flow["flow"], step["step"], step["variant"] or "", "", "", "", step["sent"], step["reached"],
                         step["seen"], step["waiting"], step["skipped"], step["failed"], step["replied_24h"],
                         step["buttons"], step["handed_off"], step["opted_out"], reasons])  # fmt: skip
    return FLOW_HEADER, rows


HANDOFF_HEADER = ["section", "key", "handoffs", "claimed", "breached", "breach_rate", "won", "nurture", "lost", "open",
                  "count", "p50_seconds", "p90_seconds", "p99_seconds", "median_seconds_to_claim",
                  "median_seconds_to_first_reply"]  # fmt: skip
_COUNTS = ("handoffs", "claimed", "breached", "breach_rate", "won", "nurture", "lost", "open")


def handoff_rows(report: dict) -> tuple[list[str], list[list[Any]]]:
    """Totals, speed to lead (one row per measure), then per operator and per group."""
    blank4, blank2 = [""] * 4, [""] * 2
    rows = [["total", "", *(report[name] for name in _COUNTS), *blank4, *blank2]]
    for name, speed in report["speed_to_lead"].items():
        rows.append(["speed_to_lead", name, *[""] * len(_COUNTS), speed["count"], speed["p50"], speed["p90"],
                     speed["p99"], *blank2])  # fmt: skip
    for operator in report["operators"]:
        rows.append(["operator", operator["operator"], *(operator[name] for name in _COUNTS), *blank4,
                     operator["median_seconds_to_claimed"], operator["median_seconds_to_first_reply"]])  # fmt: skip
    for group in report["groups"]:
        rows.append([report["by"], group["key"], *(group[name] for name in _COUNTS), *blank4,
                     group["median_seconds_to_claimed"], ""])  # fmt: skip
    return HANDOFF_HEADER, rows


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if value is None else value for value in row] for row in rows)
    return out.getvalue()


# --- text tables -------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(value) for value in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(header))]
    lines = []
    for row in cells:
        padded = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    return text == "-" or text.rstrip("%").replace(".", "", 1).isdigit() or text[:1].isdigit()


def _heading(report: dict, title: str) -> str:
    return f"{title}, {report['since'][:16]} to {report['until'][:16]} (UTC)\n{report['rule']}\n"


def funnel_table(report: dict) -> str:
    """Per group: each stage with leads reached, conversion from the previous stage, median time in it."""
    parts = [_heading(report, "Funnel")]
    for group in report["groups"]:
        title = "All leads" if group["key"] == "all" else f"{report['by']}: {group['key']}"
        parts.append(f"{title}: {group['leads']} leads, {percent(group['overall_conversion'])} reached the last stage")
        rows = [
            [stage["stage"], stage["reached"], percent(stage["conversion"]),
             duration(stage["median_seconds_in_stage"])]
            for stage in group["stages"]
        ]  # fmt: skip
        parts.append(table(["stage", "reached", "from previous", "median time in stage"], rows) + "\n")
    return "\n".join(parts).rstrip() + "\n"


def flows_table(report: dict) -> str:
    """Per flow: its enrollments and goal, its steps, and its A/B variants with a note."""
    parts = [_heading(report, "Flows")]
    for flow in report["flows"]:
        exits = ", ".join(f"{why} {count}" for why, count in sorted(flow["exited"].items())) or "none"
        goal = "no goal"
        if flow["goal"]:
            goal = f"goal {flow['goal']}: {flow['reached_goal']} reached it ({percent(flow['goal_conversion'])})"
        parts.append(f"{flow['flow']} ({flow['name'] or 'not loaded'}): {flow['enrolled']} enrolled, "
                     f"{flow['active']} active, {flow['done']} done, exited: {exits}; {flow['handed_off']} handed off, "
                     f"{flow['opted_out']} opted out; {goal}")  # fmt: skip
        rows = [
            [step["step"], step["variant"] or "", step["sent"], step["reached"], step["seen"], step["skipped"],
             step["failed"], step["replied_24h"],
             step["buttons"], step["handed_off"], step["opted_out"],
             ", ".join(f"{why} {count}" for why, count in sorted(step["skip_reasons"].items()))]
            for step in flow["steps"]
        ]  # fmt: skip
        header = ["step", "variant", "sent", "reached", "seen", "skipped", "failed", "replied 24h", "buttons",
                  "handed off", "opted out", "skipped because"]  # fmt: skip
        parts.append(table(header, rows) if rows else "  no steps came due")
        for block in flow["variants"]:
            rows = [[v["variant"], v["leads"], v["responded"], percent(v["response_rate"]), v["reached_goal"],
                     percent(v["conversion"])] for v in block["variants"]]  # fmt: skip
            parts.append(f"\nA/B {block['step']}:")
            parts.append(table(["variant", "leads", "answered", "rate", "reached goal", "conversion"], rows))
            parts.append(block["note"])
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def handoffs_table(report: dict) -> str:
    """Totals, speed to lead percentiles, then outcomes per operator and per group."""
    parts = [_heading(report, "Handoffs")]
    parts.append(f"{report['handoffs']} handoffs, {report['claimed']} claimed, {report['breached']} breached the SLA "
                 f"({percent(report['breach_rate'])}); won {report['won']}, nurture {report['nurture']}, "
                 f"lost {report['lost']}, open {report['open']}\n")  # fmt: skip
    speed = [[name.replace("_", " "), s["count"], duration(s["p50"]), duration(s["p90"]), duration(s["p99"])]
             for name, s in report["speed_to_lead"].items()]  # fmt: skip
    parts.append("Speed to lead (from the warm signal)")
    parts.append(table(["to", "handoffs", "p50", "p90", "p99"], speed) + "\n")
    header = ["handoffs", "breached", "won", "nurture", "lost", "open", "median to claim"]
    rows = [[o["operator"], o["handoffs"], o["breached"], o["won"], o["nurture"], o["lost"], o["open"],
             duration(o["median_seconds_to_claimed"]), duration(o["median_seconds_to_first_reply"])]
            for o in report["operators"]]  # fmt: skip
    parts.append(table(["operator", *header, "median to reply"], rows) + "\n" if rows else "No claims yet.\n")
    rows = [[g["key"], g["handoffs"], g["breached"], g["won"], g["nurture"], g["lost"], g["open"],
             duration(g["median_seconds_to_claimed"])] for g in report["groups"]]  # fmt: skip
    if rows:
        parts.append(table([report["by"], *header], rows))
    return "\n".join(parts).rstrip() + "\n"
