"""Leads by their learned likelihood now, in bands of 20 points, for the reports' `by=likelihood` breakdown.

The funnel reads its own `stageentry` rows, where each breakdown is copied from the lead; a likelihood changes
after every fit and rescore, so its band is taken from the lead at report time instead (a join on the lead by
its id: the one breakdown that costs more than the table alone).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case

from storage.models import Lead

NONE = "none"  # no accepted model has scored the lead


def likelihood_band() -> Any:
    """SQL for a lead's band: `0-19`, `20-39`, `40-59`, `60-79`, `80-100`, or `none`."""
    return case(
        (Lead.likelihood.is_(None), NONE),
        (Lead.likelihood < 20, "0-19"),
        (Lead.likelihood < 40, "20-39"),
        (Lead.likelihood < 60, "40-59"),
        (Lead.likelihood < 80, "60-79"),
        else_="80-100",
    )
