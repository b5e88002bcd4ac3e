"""A light multilingual text matcher: TF-IDF weighted cosine over words, word pieces and CJK character pairs.

Pure Python, nothing downloaded: quick answers (`flows.answers`) match a visitor's question against the
question variants marketers write. Text is normalised (NFKC, casefold, `ё` as `е`, punctuation dropped);
features are whole words and the character 3-grams inside each word with its edges marked, so Russian
inflections share most of their features ("цена", "цены", "ценах"); runs of Chinese, Japanese or Korean
characters give single characters and pairs of neighbours, since those scripts put no spaces between words.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

# Scripts written without spaces between words (as flows' intent words treat them).
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_RUNS = re.compile(rf"[{_UNSPACED}]+|[^\W_{_UNSPACED}]+")
_CJK = re.compile(rf"[{_UNSPACED}]")
GRAM = 3


def normalise(text: str) -> str:
    """NFKC, casefolded, `ё` as `е`, every punctuation mark or symbol a space."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("ё", "е")
    return "".join(" " if unicodedata.category(char)[0] in "PSZC" else char for char in text)


def features(text: str) -> Counter[str]:
    """The features of a text with their counts: words and their 3-grams; CJK characters and pairs."""
    found: Counter[str] = Counter()
    for run in _RUNS.findall(normalise(text)):
        if _CJK.match(run):
            found.update(run)
            found.update(run[i : i + 2] for i in range(len(run) - 1))
        else:
            found[f"w:{run}"] += 1
            marked = f"<{run}>"
            found.update(marked[i : i + GRAM] for i in range(len(marked) - GRAM + 1))
    return found


class Index:
    """TF-IDF vectors of labelled texts, searched by cosine; built once, then each search is a few dict lookups."""

    def __init__(self, texts: Sequence[tuple[str, str]]) -> None:
        """`texts`: (label, text) pairs, several texts per label (a question's variants)."""
        counted = [(label, features(text)) for label, text in texts]
        seen = Counter(feature for _, found in counted for feature in found)
        total = len(counted)
        self.idf = {feature: math.log((1 + total) / (1 + count)) + 1 for feature, count in seen.items()}
        self.unknown_idf = math.log(1 + total) + 1  # a feature no variant has: as rare as can be
        self.labels = [label for label, _ in counted]
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for number, (_, found) in enumerate(counted):
            for feature, weight in self._vector(found).items():
                self.postings.setdefault(feature, []).append((number, weight))

    def _vector(self, found: Counter[str]) -> dict[str, float]:
        """Sublinear TF times IDF, of unit length."""
        weights = {f: (1 + math.log(n)) * self.idf.get(f, self.unknown_idf) for f, n in found.items()}
        norm = math.sqrt(sum(weight * weight for weight in weights.values())) or 1.0
        return {feature: weight / norm for feature, weight in weights.items()}

    def scores(self, text: str) -> dict[str, float]:
        """Each label's best cosine against `text` (labels sharing nothing with it are left out)."""
        per_text: dict[int, float] = {}  # a plain dict: Counter's missing-key hook is slower
        postings, labels = self.postings, self.labels
        for feature, weight in self._vector(features(text)).items():
            for number, other in postings.get(feature, ()):
                per_text[number] = per_text.get(number, 0.0) + weight * other
        best: dict[str, float] = {}
        for number, score in per_text.items():
            if score > best.get(labels[number], 0.0):
                best[labels[number]] = score
        return best


def ranked(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Labels by score, best first."""
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def pairs(labelled: Iterable[tuple[str, Iterable[str]]]) -> list[tuple[str, str]]:
    """(label, text) for every text of every label."""
    return [(label, text) for label, texts in labelled for text in texts]
