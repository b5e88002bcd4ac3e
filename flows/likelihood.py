"""A lead's learned likelihood as the lead page, the API and the context card show it (flows/learned.py).

Shown only when an accepted model gave the lead one (`lead.likelihood_model`: a fit, or a rescore after the lead
acted, bot/scoring/rescore.py); before the first accepted fit nothing shows. The factors are read on the caller's
own session, so the context card sees what its transaction just wrote.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from flows.learned import explain_lead, explanation_text
from storage.learned import scoring_model
from storage.models import Lead

TOP_FACTORS = 5


async def lead_likelihood(session: AsyncSession, lead: Lead, now: datetime, limit: int = TOP_FACTORS) -> dict | None:
    """The lead's likelihood, the model that gave it, and the factors that move it most; None without one.

    Returns:
        `likelihood` (as stored by the fit), `model`, `model_at`, `now` (the model's reading of what the lead has
        done until now: a lead younger than the window has done more since), `factors` and `explained`.
    """
    if lead.likelihood is None or lead.likelihood_model is None:
        return None
    model = await scoring_model(session, lead.likelihood_model)
    if model is None or not model.accepted:
        return None
    connection = await session.connection()
    explained = await explain_lead(str(session.bind.url), model, lead.id, now, limit, connection)
    factors = explained.factors if explained else []
    return {
        "likelihood": lead.likelihood,
        "model": model.id,
        "model_at": model.created_at.isoformat(),
        "now": explained.likelihood if explained else lead.likelihood,
        "factors": [factor_item(factor) for factor in factors],
        "explained": explanation_text(factors),
    }


def factor_item(factor: Any) -> dict[str, Any]:
    """One factor of one lead as JSON: its name, count, weight, points and words."""
    return {
        "factor": factor.name,
        "count": factor.count,
        "weight": factor.weight,
        "points": factor.points,
        "text": factor.text,
    }


def likelihood_line(shown: dict[str, Any], top: int = 3) -> str:
    """`72% (model #3): +18 visited /pricing twice, +9 came from google/cpc, -7 no reply to 2 steps`."""
    texts = ", ".join(factor["text"] for factor in shown["factors"][:top]) or "nothing stands out"
    return f"{shown['likelihood']}% (model #{shown['model']}): {texts}"
