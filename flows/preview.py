"""`kindling preview`: each step as a lead would see it, with the local time it would go out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flows.durations import zone
from flows.render import Rendered, RenderError, render_step
from flows.spec import FlowSpec, StepSpec


@dataclass(frozen=True)
class PreviewStep:
    """One step (variant) of a preview: when, what, or why not."""

    step: StepSpec
    due: datetime
    rendered: Rendered | None = None
    error: RenderError | None = None
    skipped: bool = False


def preview(
    spec: FlowSpec,
    context: dict[str, Any],
    start: datetime,
    step_name: str | None = None,
    all_variants: bool = False,
    locale: str | None = None,
) -> list[PreviewStep]:
    """Render every step (or one) for `context`: the lead's own A/B variant, or all of them; in `locale` (a
    language code) where a step has a variant in it.

    Due times chain from `start` (the enrollment) in the lead's time zone; quiet hours and caps are the
    engine's business and are not applied here.
    """
    lead = context["lead"]
    due, items = start, []
    for name in spec.step_names:
        blocks = list(spec.variants(name, locale)) if all_variants else [spec.step_for(name, lead["id"], locale)]
        due = blocks[0].delay.due(due, lead.get("timezone"))
        if step_name in (None, name):
            items.extend(_preview_block(spec, block, due, context) for block in blocks)
    return items


def _preview_block(spec: FlowSpec, step: StepSpec, due: datetime, context: dict[str, Any]) -> PreviewStep:
    skipped = step.when is not None and not step.when.holds(**context)
    try:
        rendered = render_step(spec, step.name, step.variant, context, step.locale)
        return PreviewStep(step, due, rendered, skipped=skipped)
    except RenderError as exc:
        return PreviewStep(step, due, error=exc, skipped=skipped)


def preview_text(
    items: list[PreviewStep], timezone: str | None = None, html: Callable[[Rendered], str] | None = None
) -> str:
    """A preview as the CLI prints it: a header per step, an email's subject, then its text, buttons and action.

    `html` renders an email step's HTML version (the bot's email layout); without it the HTML is left out.
    """
    blocks = []
    for item in items:
        step = item.step
        variant = f" (variant {step.variant})" if step.variant else ""
        variant += f" (locale {step.locale})" if step.locale else ""
        when = f"{item.due.astimezone(zone(timezone)):%a %Y-%m-%d %H:%M %Z}"
        lines = [f"== {step.name}{variant}: {when}, after {step.delay}"]
        if item.skipped:
            lines.append(f"   skipped for this lead: when={step.when.source if step.when else ''!r} is false")
        if item.error is not None:
            lines.append(f"   render error: {item.error}")
        if step.channels:
            lines.append(f"   channel: {' or '.join(step.channels)}")
        if item.rendered is not None and item.rendered.subject is not None:
            lines.append(f"   subject: {item.rendered.subject}")
        if item.rendered is not None and item.rendered.text:
            lines.append(item.rendered.text)
        if item.rendered is not None and item.rendered.text and "email" in step.channels:
            lines.append(f"-- HTML --\n{html(item.rendered)}" if html else "-- HTML: not available in this build --")
        if step.buttons:
            lines.append(" ".join(f"[{button}]" for button in step.buttons))
        if step.action is not None:
            lines.append(f"-> action {_action_text(step)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _action_text(step: StepSpec) -> str:
    action = step.action
    assert action is not None
    if isinstance(action.value, float):
        return f"{action.kind}:{action.value:+g}"
    return action.kind if action.value is None else f"{action.kind}:{action.value}"
