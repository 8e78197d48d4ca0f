"""Routing metrics: M-Acc, F-Acc and D-Acc at top-k, the accuracy matrix, and forgetting.

Definitions ("Continual Model Routing in Evolving Model Hubs", Bell et al., ICML 2026):

- M-Acc@k: the true model id is among the k highest-scoring models.
- F-Acc@k: one of the k highest-scoring models belongs to the true model's family.
- D-Acc@k: one of the k highest-scoring models has the true model's domain.

Family and domain of a label are the first values the registry saw for it (a few CMRBench models
carry two). All values are percentages in [0, 100]. Forgetting on test experience ``j`` is the
best accuracy on ``j`` after any earlier training experience minus the accuracy after the last
one; the stream forgetting averages it over every test experience except the last trained one
(the standard continual-learning definition, as in Chaudhry et al., "Riemannian Walk", 2018).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.logging import BaseLogger
from torch import Tensor

METRIC_KINDS = ("m_acc", "f_acc", "d_acc")
METRIC_LABELS = {"m_acc": "M-Acc", "f_acc": "F-Acc", "d_acc": "D-Acc"}
DEFAULT_TOP_K = (1, 3, 5, 10)


def metric_key(kind: str, k: int) -> str:
    """Return the flat key of a metric, e.g. ``m_acc`` for top-1 and ``d_acc_top3`` for top-3."""
    return kind if k == 1 else f"{kind}_top{k}"


def routing_hits(
    logits: Tensor,
    labels: Tensor,
    family_ids: Tensor,
    domain_ids: Tensor,
    ks: Sequence[int] = DEFAULT_TOP_K,
) -> dict[str, int]:
    """Count top-k hits of one minibatch for every metric key.

    Args:
        logits: Scores ``[batch, num_rows]``; ``-inf`` marks models that cannot be predicted.
        labels: True labels ``[batch]``.
        family_ids: Family id per label, ``[num_labels]`` with ``num_labels >= num_rows``.
        domain_ids: Domain id per label, same shape as ``family_ids``.
        ks: The k values to count.

    Returns:
        Hit counts keyed by :func:`metric_key`; positions with ``-inf`` scores never count.
    """
    k_max = min(max(ks), logits.shape[1])
    scores, top = logits.topk(k_max, dim=1)
    valid = torch.isfinite(scores)

    labels = labels.to(top.device)
    family_ids = family_ids.to(top.device)
    domain_ids = domain_ids.to(top.device)
    matches = {
        "m_acc": (top == labels.unsqueeze(1)) & valid,
        "f_acc": (family_ids[top] == family_ids[labels].unsqueeze(1)) & valid,
        "d_acc": (domain_ids[top] == domain_ids[labels].unsqueeze(1)) & valid,
    }

    hits: dict[str, int] = {}
    for kind, match in matches.items():
        for k in ks:
            hits[metric_key(kind, k)] = int(match[:, :k].any(dim=1).sum())
    return hits


@dataclass
class AccuracyMatrix:
    """Accuracy after training experience ``i`` (row) on test experience ``j`` (column), per metric.

    Values are percentages; a missing cell means that pair was not evaluated.
    """

    values: dict[str, dict[int, dict[int, float]]] = field(default_factory=dict)

    def record(self, key: str, train_exp: int, test_exp: int, value: float) -> None:
        """Store one cell."""
        self.values.setdefault(key, {}).setdefault(train_exp, {})[test_exp] = value

    def keys(self) -> list[str]:
        """Metric keys with at least one cell."""
        return list(self.values)

    def last_row(self, key: str) -> dict[int, float]:
        """Return the row of the last evaluated training experience, ``{test_exp: value}``."""
        rows = self.values.get(key, {})
        return rows[max(rows)] if rows else {}

    def final_average(self, key: str) -> float:
        """Mean of the last row over the test experiences it covers (NaN when empty)."""
        row = self.last_row(key)
        return sum(row.values()) / len(row) if row else math.nan

    def forgetting(self, key: str) -> float:
        """Mean over earlier test experiences of (best earlier accuracy - final accuracy).

        Only test experiences evaluated both before and after the last training experience count;
        with a single row (one evaluation round) forgetting is NaN.
        """
        rows = self.values.get(key, {})
        if len(rows) < 2:
            return math.nan
        last = max(rows)
        drops = []
        for test_exp, final in rows[last].items():
            earlier = [
                row[test_exp] for train_exp, row in rows.items() if train_exp < last and test_exp in row
            ]
            if earlier:
                drops.append(max(earlier) - final)
        return sum(drops) / len(drops) if drops else math.nan

    def as_table(self, key: str, size: int) -> list[list[float]]:
        """Dense ``size x size`` table with NaN for missing cells."""
        rows = self.values.get(key, {})
        return [[rows.get(i, {}).get(j, math.nan) for j in range(size)] for i in range(size)]

    def to_dict(self) -> dict[str, dict[str, dict[str, float]]]:
        """JSON-ready nested dict ``{key: {train_exp: {test_exp: value}}}`` with string keys."""
        return {
            key: {str(i): {str(j): v for j, v in row.items()} for i, row in rows.items()}
            for key, rows in self.values.items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, dict[str, float]]]) -> AccuracyMatrix:
        """Rebuild from :meth:`to_dict` output."""
        matrix = cls()
        for key, rows in data.items():
            for i, row in rows.items():
                for j, value in row.items():
                    matrix.record(key, int(i), int(j), float(value))
        return matrix


def summarize(matrix: AccuracyMatrix, ks: Iterable[int] = DEFAULT_TOP_K) -> dict[str, float]:
    """Final averages for every metric key plus ``<kind>_forgetting`` at top-1, in percent."""
    summary: dict[str, float] = {}
    for kind in METRIC_KINDS:
        for k in ks:
            key = metric_key(kind, k)
            summary[key] = matrix.final_average(key)
        summary[f"{kind.split('_')[0]}_forgetting"] = matrix.forgetting(kind)
    return summary


class RoutingMetrics(PluginMetric[dict[str, float]]):
    """Avalanche plugin metric that computes M/F/D-Acc at top-k on each evaluated experience.

    Emits ``<Label>@<k>_Exp/eval_phase/<stream>/Exp<jjj>`` per experience and
    ``<Label>@<k>_Stream/eval_phase/<stream>`` per evaluation call, so any Avalanche logger sees
    them, and fills :attr:`matrix` with row ``train_exp_counter - 1`` (the last finished training
    experience). Evaluations before any training are emitted but not recorded.

    Args:
        family_ids: Family id per registry label.
        domain_ids: Domain id per registry label.
        ks: Top-k values.
    """

    def __init__(self, family_ids: Tensor, domain_ids: Tensor, ks: Sequence[int] = DEFAULT_TOP_K) -> None:
        super().__init__()
        self.family_ids = family_ids
        self.domain_ids = domain_ids
        self.ks = tuple(ks)
        self.matrix = AccuracyMatrix()
        self._hits: dict[str, int] = {}
        self._count = 0
        self._stream_hits: dict[str, int] = {}
        self._stream_count = 0

    def reset(self) -> None:
        self._hits = {}
        self._count = 0

    def result(self) -> dict[str, float]:
        if self._count == 0:
            return {}
        return {key: 100.0 * hits / self._count for key, hits in self._hits.items()}

    def before_eval(self, strategy: Any) -> None:
        self._stream_hits = {}
        self._stream_count = 0

    def before_eval_exp(self, strategy: Any) -> None:
        self.reset()

    def after_eval_iteration(self, strategy: Any) -> None:
        hits = routing_hits(
            strategy.mb_output.detach(), strategy.mb_y, self.family_ids, self.domain_ids, self.ks
        )
        for key, value in hits.items():
            self._hits[key] = self._hits.get(key, 0) + value
        self._count += int(strategy.mb_y.shape[0])

    def after_eval_exp(self, strategy: Any) -> list[MetricValue]:
        values = self.result()
        for key, hits in self._hits.items():
            self._stream_hits[key] = self._stream_hits.get(key, 0) + hits
        self._stream_count += self._count

        test_exp = int(strategy.experience.current_experience)
        trained = int(strategy.clock.train_exp_counter)
        if trained > 0:
            for key, value in values.items():
                self.matrix.record(key, trained - 1, test_exp, value)

        stream = strategy.experience.origin_stream.name
        return [
            MetricValue(
                self,
                f"{self._label(key)}_Exp/eval_phase/{stream}/Exp{test_exp:03d}",
                value,
                strategy.clock.train_iterations,
            )
            for key, value in values.items()
        ]

    def after_eval(self, strategy: Any) -> list[MetricValue]:
        if self._stream_count == 0:
            return []
        stream = strategy.experience.origin_stream.name
        return [
            MetricValue(
                self,
                f"{self._label(key)}_Stream/eval_phase/{stream}",
                100.0 * hits / self._stream_count,
                strategy.clock.train_iterations,
            )
            for key, hits in self._stream_hits.items()
        ]

    @staticmethod
    def _label(key: str) -> str:
        kind, _, top = key.partition("_top")
        return f"{METRIC_LABELS[kind]}@{top or 1}"

    def __str__(self) -> str:
        return "RoutingMetrics"


class LoggingMetricsLogger(BaseLogger):
    """Avalanche logger that forwards every metric value to the ``cmrkit.metrics`` Python logger.

    Values go out at DEBUG level, so they land in a run's ``run.log`` without cluttering the
    console.
    """

    def __init__(self) -> None:
        super().__init__()
        self._logger = logging.getLogger("cmrkit.metrics")

    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        if isinstance(value, float):
            self._logger.debug("%s = %.2f (iteration %d)", name, value, x_plot)
        else:
            self._logger.debug("%s = %s (iteration %d)", name, value, x_plot)
