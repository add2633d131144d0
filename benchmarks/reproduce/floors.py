"""What chrF a model gets without learning the task: the floors the gate and the figure draw.

- random training line: every test reference answered with a training target drawn at random (the mean over
  `draws` seeded draws): what reproducing the training distribution's surface alone scores;
- most frequent training line: every reference answered with the one most common training target.
Both are scored by the evaluation's own chrF on the same references.
"""
from __future__ import annotations

import random
from collections import Counter

from semgrpo.eval.metrics import chrf


def line_floors(training_targets: list[str], references: list[str], *, script: str, draws: int) -> dict:
    """{"random_line", "most_frequent_line"} chrF (0-100) of answering `references` with training lines."""
    random_scores = [chrf([rng.choice(training_targets) for _ in references], references, script=script)
                     for rng in (random.Random(seed) for seed in range(draws))]
    common = Counter(training_targets).most_common(1)[0][0]
    return {"random_line": sum(random_scores) / len(random_scores),
            "random_line_draws": random_scores,
            "most_frequent_line": chrf([common] * len(references), references, script=script)}
