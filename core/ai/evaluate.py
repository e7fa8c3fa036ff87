"""Measures the offline phishing detection on a labelled set: recall and precision per split and language.

    .venv/bin/python -m core.ai.evaluate tests/data/phishing_sms.jsonl

Each line of the set is a JSON object with `text`, `lang` (en/es), `label` (phishing/legit), `source` and `split`
(dev: the half the rules were tuned on; heldout: the half kept aside). A text counts as flagged when the offline
analysis gives it the intent `spam_phishing`, which is what the user sees.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.ai.fallback import FallbackEngine


@dataclass
class Score:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0

    @property
    def recall(self) -> float:
        found = self.true_positives + self.false_negatives
        return self.true_positives / found if found else 1.0

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 1.0

    @property
    def total(self) -> int:
        return self.true_positives + self.false_positives + self.false_negatives + self.true_negatives

    def add(self, flagged: bool, phishing: bool) -> None:
        if flagged and phishing:
            self.true_positives += 1
        elif flagged:
            self.false_positives += 1
        elif phishing:
            self.false_negatives += 1
        else:
            self.true_negatives += 1


@dataclass
class Report:
    scores: dict[str, Score] = field(default_factory=dict)  # "all", "dev", "heldout", "en", "es"
    mistakes: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def load(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate(rows: Iterable[dict[str, str]], engine: FallbackEngine | None = None) -> Report:
    engine = engine or FallbackEngine()
    report = Report()
    started = time.perf_counter()
    for row in rows:
        flagged = engine.analyze_now(row["text"]).intent == "spam_phishing"
        phishing = row["label"] == "phishing"
        for key in ("all", row.get("split", "dev"), row["lang"]):
            report.scores.setdefault(key, Score()).add(flagged, phishing)
        if flagged != phishing:
            report.mistakes.append(row)
    report.seconds = time.perf_counter() - started
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m core.ai.evaluate <labelled.jsonl>", file=sys.stderr)
        return 2
    report = evaluate(load(Path(argv[0])))
    print(f"{'subset':<8} {'texts':>5} {'recall':>7} {'precision':>9}  (tp fp fn tn)")
    for key in ("dev", "heldout", "en", "es", "all"):
        score = report.scores.get(key)
        if score is not None:
            print(f"{key:<8} {score.total:>5} {score.recall:>7.3f} {score.precision:>9.3f}  "
                  f"({score.true_positives} {score.false_positives} {score.false_negatives} {score.true_negatives})")
    for row in report.mistakes:
        print(f"missed {row['label']} [{row.get('split')}/{row['lang']}]: {row['text']}")
    print(f"{report.scores['all'].total} texts in {report.seconds * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
