"""Choose training settings on a held-out part of the first experience's training split.

The CMRBench test splits are never used here. The script splits E1's training prompts (the
``val`` file in the lite variant) 80/20 with a fixed seed, trains the ``naive`` router on the 80%
for each candidate setting, and reports top-1 M-Acc and D-Acc on the 20%.

Usage::

    python benchmarks/holdout_tuning.py --data-dir ../shared/cmrbench \
        train.lr_router=3e-3 train.epochs=4 :: train.lr_router=1e-2 train.epochs=4
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.training.plugins import EvaluationPlugin

from cmrkit.config import build_config
from cmrkit.metrics import RoutingMetrics
from cmrkit.runner import build_router, load_benchmark, seed_everything
from cmrkit.strategies.naive import Naive


def holdout_scenario(benchmark: object, seed: int) -> object:
    """Build a one-experience scenario: 80% of E1's training prompts to train, 20% to evaluate."""
    dataset = benchmark.train_stream[0].dataset
    indices = list(range(len(dataset)))
    random.Random(seed).shuffle(indices)
    cut = int(0.8 * len(indices))
    train, held_out = dataset.subset(sorted(indices[:cut])), dataset.subset(sorted(indices[cut:]))
    return with_classes_timeline(benchmark_from_datasets(train=[train], test=[held_out]))


def evaluate(settings: list[str], data_dir: str, seed: int) -> dict[str, float]:
    config = build_config(overrides=[f"data.dir={data_dir}", "run.progress=false", *settings])
    seed_everything(seed)
    benchmark = load_benchmark(config)
    scenario = holdout_scenario(benchmark, seed)
    metrics = RoutingMetrics(benchmark.registry.family_ids(), benchmark.registry.domain_ids(), ks=[1, 3])
    strategy = Naive(
        model=build_router(config, benchmark.registry),
        train=config.train,
        evaluator=EvaluationPlugin(metrics, loggers=[]),
        progress=False,
        seed=seed,
    )
    started = time.perf_counter()
    strategy.train(scenario.train_stream[0])
    seconds = time.perf_counter() - started
    strategy.eval(scenario.test_stream)
    return {
        "m_acc": metrics.matrix.final_average("m_acc"),
        "d_acc": metrics.matrix.final_average("d_acc"),
        "d_acc_top3": metrics.matrix.final_average("d_acc_top3"),
        "train_seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("settings", nargs="*", help="KEY=VALUE groups separated by ::")
    args = parser.parse_args()
    groups: list[list[str]] = [[]]
    for item in args.settings:
        if item == "::":
            groups.append([])
        else:
            groups[-1].append(item)
    for group in groups:
        result = evaluate(group, args.data_dir, args.seed)
        print(json.dumps({"settings": group, **{k: round(v, 2) for k, v in result.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
