"""Fit, evaluate and accept or refuse a learned scoring model (needs the `kindling[scoring]` extra: scikit-learn).

Leads are ordered by cut-off. The newest fifth is held out: the model is chosen (its regularisation, by
cross-validation on time-ordered folds of the older leads) and fitted without it, then judged on it next to the
rule score (turned into a probability by a one-factor logistic fit on the same older leads). It is accepted only
with enough successes and when it beats the rule score on the held-out leads: a higher ROC AUC with 95%
confidence (a paired bootstrap) and a Brier score no worse. An accepted model is fitted again on every lead.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import TimeSeriesSplit

from flows.learned import FactorCounts, LearnedScoring, gather
from storage.db import Sessions
from storage.learned import History, save_model, set_likelihoods
from storage.models import ScoringModel

HELD_OUT = 0.2  # the newest fifth of the labelled leads
STRENGTHS = (0.03, 0.3, 3.0)  # the inverse regularisation strengths tried (scikit-learn's C)
MIN_LEADS = 5  # a factor fewer labelled leads have is left out
MAX_FACTORS = 2000
BOOTSTRAP = 200
BOOTSTRAP_LEADS = 20_000


class Matrix(FactorCounts):
    """Factor counts for many leads at once, kept as the coordinates of a sparse matrix (row per lead)."""

    def __init__(self) -> None:
        super().__init__()
        self.index: dict[int, int] = {}
        self.names: dict[str, int] = {}
        self.r, self.c, self.v = array("i"), array("i"), array("f")
        self.created, self.goal_at, self.rule = array("d"), array("d"), array("d")

    def start(self, lead_id: int) -> None:
        if lead_id not in self.index:
            self.index[lead_id] = len(self.index)
            self.created.append(0.0)
            self.goal_at.append(np.nan)
            self.rule.append(0.0)

    def add(self, lead_id: int, name: str, count: float = 1) -> None:
        row = self.index.get(lead_id)
        if count and row is not None:
            column = self.names.get(name)
            if column is None:
                column = self.names[name] = len(self.names)
            self.r.append(row)
            self.c.append(column)
            self.v.append(count)

    def arrived(self, lead_id: int, created: float, goal_at: float | None) -> None:
        row = self.index[lead_id]
        self.created[row], self.goal_at[row] = created, np.nan if goal_at is None else goal_at

    def rule_points(self, lead_id: int, points: float) -> None:
        row = self.index.get(lead_id)
        if row is not None:
            self.rule[row] = points

    def counts(self) -> sparse.csr_matrix:
        """Leads x factors, each cell the count (duplicates summed)."""
        shape = (len(self.index), len(self.names))
        rows, columns = np.frombuffer(self.r, dtype=np.int32), np.frombuffer(self.c, dtype=np.int32)
        matrix = sparse.csr_matrix((np.frombuffer(self.v, dtype=np.float32), (rows, columns)), shape=shape)
        matrix.sum_duplicates()
        return matrix

    def ids(self) -> np.ndarray:
        return np.fromiter(self.index, dtype=np.int64, count=len(self.index))


@dataclass
class Fit:
    """What a fit found: its figures, the verdict, and (accepted) the model."""

    accepted: bool
    verdict: str
    successes: int
    failures: int
    figures: dict = field(default_factory=dict)
    intercept: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    held_out: list[int] = field(default_factory=list)  # lead ids of the held-out leads


def outcomes(m: Matrix, settings: LearnedScoring, now: datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which leads are labelled (their horizon ended, the goal not reached before the cut-off), success, cut-off."""
    created, goal_at = np.frombuffer(m.created), np.frombuffer(m.goal_at)
    window, horizon = settings.window.total_seconds(), settings.horizon.total_seconds()
    stamp = now.timestamp()
    cut = np.minimum(created + window, stamp)
    with np.errstate(invalid="ignore"):
        labelled = (created + window + horizon <= stamp) & ~(goal_at < cut)
        success = (goal_at >= cut) & (goal_at < cut + horizon)
    return labelled, success & labelled, cut


def fit(m: Matrix, settings: LearnedScoring, now: datetime) -> Fit:
    """Learn from the labelled leads, judge on the newest fifth against the rule score, accept or refuse."""
    labelled, success, cut = outcomes(m, settings, now)
    successes, failures = int(success.sum()), int(labelled.sum() - success.sum())
    if successes < settings.min_outcomes:
        verdict = (
            f"refused: too little data, {successes} successes (leads that reached {settings.goal} within the"
            f" horizon) where scoring.min_outcomes asks for {settings.min_outcomes}"
        )
        return Fit(False, verdict, successes, failures)
    if failures < 2:
        verdict = "refused: every labelled lead reached the goal, there is nothing to tell apart"
        return Fit(False, verdict, successes, failures)
    rows = np.flatnonzero(labelled)
    rows = rows[np.argsort(cut[rows], kind="stable")]
    split = len(rows) - max(int(len(rows) * HELD_OUT), 1)
    train, held = rows[:split], rows[split:]
    y = success.astype(np.int8)
    x, names = _features(m.counts(), train, list(m.names))
    if len(np.unique(y[held])) < 2 or len(np.unique(y[train])) < 2:
        return Fit(False, "refused: the held-out or the older leads are all of one outcome", successes, failures)
    strength = _choose(x[train], y[train])
    figures = _judge(x, y, np.frombuffer(m.rule), train, held, strength) | {"factors": len(names)}
    accepted, verdict = _verdict(figures)
    result = Fit(accepted, verdict, successes, failures, figures, held_out=[int(i) for i in m.ids()[held]])
    if accepted:
        final = LogisticRegression(C=strength, max_iter=1000).fit(x[rows], y[rows])
        result.intercept = float(final.intercept_[0])
        result.weights = {name: float(w) for name, w in zip(names, final.coef_[0], strict=True) if w}
    result.counts = {name: int(n) for name, n in zip(names, np.diff(x.tocsc().indptr), strict=True)}
    return result


def _judge(x: sparse.csr_matrix, y: np.ndarray, rule: np.ndarray, train: np.ndarray, held: np.ndarray,
           strength: float) -> dict:  # fmt: skip
    """Fit on the older leads; the held-out figures of the model and of the rule score, and the AUC gain's interval."""
    learned = LogisticRegression(C=strength, max_iter=1000).fit(x[train], y[train])
    scale = rule[train].std() or 1.0  # the rule score as a probability: a one-factor fit on the same leads
    baseline = LogisticRegression(max_iter=1000).fit((rule[train] / scale).reshape(-1, 1), y[train])
    predicted = learned.predict_proba(x[held])[:, 1]
    ruled = baseline.predict_proba((rule[held] / scale).reshape(-1, 1))[:, 1]
    return {
        "learned": _figures(y[held], predicted),
        "rule": _figures(y[held], ruled, ranking=rule[held]),
        "held_out": len(held),
        "trained_on": len(train),
        "strength": strength,
        "auc_gain_95": list(_auc_gain(y[held], predicted, rule[held])),
    }


def _features(counts: sparse.csr_matrix, train: np.ndarray, every: list[str]) -> tuple[sparse.csr_matrix, list[str]]:
    """log(1 + count) of the factors enough training leads have (the most common MAX_FACTORS)."""
    present = np.asarray((counts[train] > 0).sum(axis=0)).ravel()
    keep = np.flatnonzero(present >= MIN_LEADS)
    keep = keep[np.argsort(-present[keep], kind="stable")][:MAX_FACTORS]
    keep.sort()
    x = counts[:, keep].tocsr()
    x.data = np.log1p(x.data)
    return x, [every[i] for i in keep]


def _choose(x: sparse.csr_matrix, y: np.ndarray) -> float:
    """The regularisation with the lowest log loss over time-ordered folds of the training leads."""
    losses = {}
    for strength in STRENGTHS:
        folds = []
        for fold, valid in TimeSeriesSplit(n_splits=3).split(x):
            if len(set(y[fold])) < 2:
                continue
            model = LogisticRegression(C=strength, max_iter=1000).fit(x[fold], y[fold])
            folds.append(log_loss(y[valid], model.predict_proba(x[valid])[:, 1], labels=[0, 1]))
        losses[strength] = np.mean(folds) if folds else np.inf
    return min(STRENGTHS, key=lambda s: losses[s])


def _figures(y: np.ndarray, p: np.ndarray, ranking: np.ndarray | None = None) -> dict:
    """ROC AUC, Brier score and the calibration table (predicted and observed by decile of predicted)."""
    order = np.argsort(p, kind="stable")
    deciles = [
        {"leads": len(part), "predicted": float(p[part].mean()), "observed": float(y[part].mean())}
        for part in np.array_split(order, 10)
        if len(part)
    ]
    auc = roc_auc_score(y, p if ranking is None else ranking)
    return {"auc": float(auc), "brier": float(brier_score_loss(y, p)), "calibration": deciles}


def _auc_gain(y: np.ndarray, learned: np.ndarray, rule: np.ndarray) -> tuple[float, float]:
    """A 95% interval of the learned model's AUC minus the rule score's, by a paired bootstrap of held-out leads."""
    random = np.random.default_rng(0)
    if len(y) > BOOTSTRAP_LEADS:
        pick = random.choice(len(y), BOOTSTRAP_LEADS, replace=False)
        y, learned, rule = y[pick], learned[pick], rule[pick]
    gains = []
    for _ in range(BOOTSTRAP):
        sample = random.integers(0, len(y), len(y))
        if 0 < y[sample].sum() < len(sample):
            gains.append(roc_auc_score(y[sample], learned[sample]) - roc_auc_score(y[sample], rule[sample]))
    low, high = np.percentile(gains, [2.5, 97.5]) if gains else (0.0, 0.0)
    return float(low), float(high)


def _verdict(figures: dict) -> tuple[bool, str]:
    learned, rule, low = figures["learned"], figures["rule"], figures["auc_gain_95"][0]
    said = f"held-out ROC AUC {learned['auc']:.3f} against the rule score's {rule['auc']:.3f}"
    if low <= 0:
        return False, f"refused: the learned model does not beat the rule score on held-out leads ({said})"
    if learned["brier"] > rule["brier"]:
        return False, (
            f"refused: the learned model ranks better ({said}) but its probabilities are worse"
            f" (Brier {learned['brier']:.3f} against {rule['brier']:.3f})"
        )
    return True, f"accepted: it beats the rule score on held-out leads ({said})"


def likelihoods(m: Matrix, intercept: float, weights: dict[str, float], now: datetime) -> np.ndarray:
    """Every lead's likelihood in percent from a model; 100 for those that reached the goal already."""
    columns = [m.names[name] for name in weights if name in m.names]
    w = np.array([weights[name] for name in weights if name in m.names], dtype=np.float64)
    x = m.counts()[:, columns].tocsr()
    x.data = np.log1p(x.data)
    p = 1.0 / (1.0 + np.exp(-(x @ w + intercept)))
    p[np.frombuffer(m.goal_at) <= now.timestamp()] = 1.0
    return np.rint(100 * p).astype(np.int16)


@dataclass
class Outcome:
    """A finished `kindling score fit`: the fit, the version it was stored as, leads rescored, and the timings."""

    fit: Fit
    version: int
    previous: int | None
    rescored: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


async def fit_and_store(sessions: Sessions, url: str, settings: LearnedScoring, now: datetime,
                        previous: int | None) -> Outcome:  # fmt: skip
    """Read the history, fit, store the fit; when accepted, recompute every lead's likelihood with it."""
    clock = time.perf_counter()
    matrix = await gather(History(url, settings.goal, settings.window, now), Matrix())
    seconds = {"read": time.perf_counter() - clock}
    result = fit(matrix, settings, now)
    seconds["fit"] = time.perf_counter() - clock - seconds["read"]
    version = await save_model(sessions, _row(result, settings, now))
    outcome = Outcome(result, version, previous, seconds=seconds)
    if result.accepted:
        start = time.perf_counter()
        scores = likelihoods(matrix, result.intercept, result.weights, now)
        pairs = zip(matrix.ids().tolist(), scores.tolist(), strict=True)
        outcome.rescored = await set_likelihoods(sessions, version, pairs)
        seconds["rescore"] = time.perf_counter() - start
    return outcome


def _row(result: Fit, settings: LearnedScoring, now: datetime) -> ScoringModel:
    return ScoringModel(
        created_at=now,
        accepted=result.accepted,
        verdict=result.verdict,
        goal=settings.goal,
        horizon_seconds=int(settings.horizon.total_seconds()),
        window_seconds=int(settings.window.total_seconds()),
        successes=result.successes,
        failures=result.failures,
        figures=result.figures,
        intercept=result.intercept,
        weights=result.weights,
        counts=result.counts,
    )
