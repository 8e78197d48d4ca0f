"""``per_model_round_robin``: a class-balanced replay policy for cmrkit's ``replay`` plugin."""

from __future__ import annotations

import random

from cmrkit.extensions import ReplayPolicyInfo
from cmrkit.plugins.replay import ReplayCandidates, ReplayPolicy


class PerModelRoundRobin(ReplayPolicy):
    """Models take turns giving one random prompt each until the budget is spent.

    Slots are dealt one per model per round, so the models of the finished experience get
    buffer counts that differ by at most one. The exception is a model with fewer prompts than
    its share: it gives all it has, and the others take its turns. Models with many training
    prompts therefore do not crowd out the rare ones as they do under uniform sampling. Which
    models get a slot in the last, partial round is random.

    Replayed prompts weigh 1.0 unless ``plugins.replay.weight`` sets another value, and the
    policy needs no embeddings.
    """

    default_weight = 1.0
    uses_embeddings = False

    def select(self, candidates: ReplayCandidates, budget: int, rng: random.Random) -> list[int]:
        """Return ``min(budget, len(candidates))`` distinct indices, balanced over models."""
        budget = min(max(budget, 0), len(candidates))
        queues = _shuffled_queues(candidates.labels, rng)
        rng.shuffle(queues)

        chosen: list[int] = []
        while len(chosen) < budget:
            for queue in queues:
                if queue and len(chosen) < budget:
                    chosen.append(queue.pop())
        return chosen


def _shuffled_queues(labels: list[int], rng: random.Random) -> list[list[int]]:
    """Candidate indices grouped by label (in label order), each group shuffled."""
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    queues = [by_label[label] for label in sorted(by_label)]
    for queue in queues:
        rng.shuffle(queue)
    return queues


POLICY = ReplayPolicyInfo(
    name="per_model_round_robin",
    policy_class=PerModelRoundRobin,
    description="Class-balanced replay: models take turns giving a random prompt.",
)
