"""Quick answers: precision and recall on a labelled question set, per language and threshold, and match speed.

    .venv/bin/python bench/answers_eval.py [--templates templates] [--set tests/data/answers_eval.toml]
        [--thresholds 0.2,0.25,...] [--margin M] [--misses] [--speed-answers 50]

Loads the answers files as the server does, answers every question of the set at each threshold (the margin
fixed), and prints precision (of the questions answered, how many right) and recall (of the questions that
have an answer, how many answered right) per language and overall; `--misses` lists what went wrong at the
configured threshold. Then times `Answers.match` on an index of `--speed-answers` answers per language (the
shipped ones, copied under new names), over the whole question set: CPU microseconds per match.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flows.answers import Answers, AnswersPolicy, load_answers  # noqa: E402
from flows.answers_eval import misses, read_cases, score  # noqa: E402

THRESHOLDS = "0.2,0.25,0.3,0.35,0.4,0.45,0.5"


def main() -> int:
    """Print the figures; 0 always (these are measurements)."""
    args = arguments()
    policy = AnswersPolicy() if args.margin is None else AnswersPolicy(margin=args.margin)
    answers = load_answers(args.templates, policy)
    cases = read_cases(args.set)
    policy = answers.policy
    print(f"{len(cases)} questions; margin {policy.margin:g}; configured threshold {policy.threshold:g}")
    languages = sorted({case.language for case in cases})
    print("threshold  " + "  ".join(f"{name:>13}" for name in [*languages, "all"]) + "   (precision / recall)")
    for threshold in (float(value) for value in args.thresholds.split(",")):
        found = score(answers, cases, replace(answers.policy, threshold=threshold))
        row = "  ".join(f"{found[name].precision:6.2f} /{found[name].recall:5.2f}" for name in [*languages, "all"])
        print(f"{threshold:9.2f}  {row}")
    if args.misses:
        for case, got in misses(answers, cases, answers.policy):
            print(f"  {case.language} expected {case.expected:<16} got {got:<16} {case.text}")
    timed = copies(answers, args.speed_answers)
    count = sum(len(found) for found in timed.by_language.values())
    print(f"speed: {per_match(timed, cases):.0f} µs CPU per match, {count} answers loaded "
          f"({args.speed_answers} per language, {len(timed.by_language)} languages)")  # fmt: skip
    return 0


def copies(answers: Answers, per_language: int) -> Answers:
    """The same answers repeated under new names up to `per_language` answers in each language."""
    grown = []
    for found in answers.by_language.values():
        shipped = list(found.values())
        grown += [replace(shipped[i % len(shipped)], name=f"{shipped[i % len(shipped)].name}-{i}")
                  for i in range(per_language)]  # fmt: skip
    return Answers(grown, answers.policy)


def per_match(answers: Answers, cases: list, rounds: int = 20) -> float:
    """CPU microseconds per `match` over every question of the set, best of a few rounds (CPU time: the
    machine is shared, and waiting for a core is not the matcher's cost)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for case in cases:
            answers.match(case.text, case.language)
        best = min(best, (time.process_time() - started) / len(cases))
    return best * 1e6


def arguments() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--templates", type=Path, default=ROOT / "templates")
    parser.add_argument("--set", type=Path, default=ROOT / "tests" / "data" / "answers_eval.toml")
    parser.add_argument("--thresholds", default=THRESHOLDS)
    parser.add_argument("--margin", type=float, default=None, help="default: AnswersPolicy's")
    parser.add_argument("--misses", action="store_true", help="list wrong and unanswered questions")
    parser.add_argument("--speed-answers", type=int, default=50)
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
