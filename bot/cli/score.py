"""`kindling score fit|factors|explain`: learned scoring on the command line (flows/learned.py).

`fit` needs the optional `kindling[scoring]` extra (scikit-learn); without it, it says how to install it.
`factors` and `explain` read the stored model and need nothing more.
"""

from __future__ import annotations

import argparse
import sys

from bot.config import Settings
from flows.clock import SystemClock
from flows.learned import INSTALL, explain_lead, explanation_text, top_factors
from storage.db import create_engine, sessionmaker
from storage.learned import accepted_model


def add_command(commands: argparse._SubParsersAction) -> None:
    """`kindling score fit`, `kindling score factors [--limit N]`, `kindling score explain ID`."""
    score = commands.add_parser("score", help="learned scoring: fit a model on the history, its factors")
    sub = score.add_subparsers(dest="score_command", required=True)
    sub.add_parser("fit", help="learn which leads reach the goal; keep the model only if it beats the rule score")
    factors = sub.add_parser("factors", help="the factors that most raise and lower success, with weights")
    factors.add_argument("--limit", type=int, default=10, help="factors of each kind (default 10)")
    explain = sub.add_parser("explain", help="one lead's likelihood and the factors that move it most")
    explain.add_argument("id", type=int)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one `kindling score` command."""
    engine = create_engine(settings.database_url)
    try:
        sessions = sessionmaker(engine)
        if args.score_command == "fit":
            return await fit(settings, sessions)
        model = await accepted_model(sessions)
        if model is None:
            print("no learned model is accepted yet: run `kindling score fit`", file=sys.stderr)
            return 1
        if args.score_command == "factors":
            print(factors_text(model, args.limit))
            return 0
        explained = await explain_lead(settings.database_url, model, args.id, SystemClock().now())
    finally:
        await engine.dispose()
    if explained is None:
        print(f"no lead {args.id}", file=sys.stderr)
        return 1
    print(f"lead {args.id}: likelihood {explained.likelihood}% (model {model.id})")
    print(explanation_text(explained.factors))
    return 0


async def fit(settings: Settings, sessions) -> int:  # type: ignore[no-untyped-def]
    """Fit, print the figures and the verdict; exit status 0 when accepted, 1 when refused."""
    try:
        from flows.learned_fit import fit_and_store
    except ImportError:
        print(INSTALL, file=sys.stderr)
        return 1
    previous = await accepted_model(sessions)
    before = previous.id if previous else None
    outcome = await fit_and_store(sessions, settings.database_url, settings.learned, SystemClock().now(), before)
    print(fit_text(outcome, settings))
    return 0 if outcome.fit.accepted else 1


def fit_text(outcome, settings: Settings) -> str:  # type: ignore[no-untyped-def]
    """The figures of a fit next to the rule score's, the calibration table, and what was kept."""
    result, learned = outcome.fit, settings.learned
    lines = [
        f"model {outcome.version}: {result.successes} successes and {result.failures} failures (leads that reached"
        f" {learned.goal} within {_days(learned.horizon)} of their cut-off, {_days(learned.window)} after they"
        " arrived, or did not)"
    ]
    figures = result.figures
    if figures:
        mine, rule = figures["learned"], figures["rule"]
        lines += [
            f"held out: the newest {figures['held_out']} leads (trained on the {figures['trained_on']} before them,"
            f" {figures['factors']} factors)",
            "",
            f"{'':14}{'learned':>10}{'rule score':>12}",
            f"{'ROC AUC':14}{mine['auc']:>10.3f}{rule['auc']:>12.3f}",
            f"{'Brier score':14}{mine['brier']:>10.3f}{rule['brier']:>12.3f}",
            "",
            "calibration on the held-out leads, by decile of the predicted chance (predicted / observed):",
            f"{'decile':8}{'leads':>7}{'learned':>18}{'rule score':>18}",
        ]
        for number, (a, b) in enumerate(zip(mine["calibration"], rule["calibration"], strict=False), start=1):
            lines.append(f"{number:<8}{a['leads']:>7}{_pair(a):>18}{_pair(b):>18}")
        lines.append("")
    lines.append(result.verdict)
    if result.accepted:
        replaced = f"replaces model {outcome.previous}" if outcome.previous else "is the first accepted model"
        lines.append(f"model {outcome.version} {replaced}: likelihood recomputed for {outcome.rescored} leads")
    else:
        kept = f"model {outcome.previous} stays the accepted one" if outcome.previous else "no model is accepted"
        lines.append(f"nothing replaced: {kept}")
    return "\n".join(lines)


def factors_text(model, limit: int) -> str:  # type: ignore[no-untyped-def]
    """The factors with the largest positive and negative weights, with how many leads have each."""
    lines = [f"model {model.id} (goal {model.goal}), weights in log-odds per log(1 + count):"]
    for title, part in zip(("raise success", "lower success"), top_factors(model, limit), strict=True):
        lines.append(f"{title}:")
        for factor in part:
            lines.append(f"  {factor.weight:+7.3f}  {factor.text:<40} {factor.name:<32} {factor.leads} leads")
        if not part:
            lines.append("  none")
    return "\n".join(lines)


def _pair(row: dict) -> str:
    return f"{100 * row['predicted']:.0f}% / {100 * row['observed']:.0f}%"


def _days(delta) -> str:  # type: ignore[no-untyped-def]
    seconds = int(delta.total_seconds())
    return f"{seconds // 86400}d" if seconds % 86400 == 0 else f"{seconds}s"
