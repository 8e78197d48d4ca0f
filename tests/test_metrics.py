import math

import pytest
import torch

from cmrkit.metrics import AccuracyMatrix, metric_key, routing_hits, summarize

# Four models: labels 0 and 1 share family 0 and domain 0; label 2 is family 1, domain 0;
# label 3 is family 2, domain 1.
FAMILIES = torch.tensor([0, 0, 1, 2])
DOMAINS = torch.tensor([0, 0, 0, 1])


def test_hits_top1_by_hand():
    logits = torch.tensor([
        [5.0, 4.0, 1.0, 0.0],  # predicts 0, true 0: model, family and domain hit
        [5.0, 4.0, 1.0, 0.0],  # predicts 0, true 1: family and domain hit
        [5.0, 4.0, 1.0, 0.0],  # predicts 0, true 2: domain hit only
        [5.0, 4.0, 1.0, 0.0],  # predicts 0, true 3: nothing
    ])
    hits = routing_hits(logits, torch.tensor([0, 1, 2, 3]), FAMILIES, DOMAINS, ks=(1,))
    assert hits["m_acc"] == 1
    assert hits["f_acc"] == 2
    assert hits["d_acc"] == 3


def test_hits_top3_by_hand():
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0], [5.0, 4.0, 3.0, 0.0]])
    hits = routing_hits(logits, torch.tensor([2, 3]), FAMILIES, DOMAINS, ks=(1, 3))
    assert hits[metric_key("m_acc", 3)] == 1
    assert hits["d_acc_top3"] == 1
    assert hits["m_acc"] == 0


def test_hits_ignore_masked_models():
    # Only model 0 is routable; top-3 must not count the -inf rows as predictions.
    logits = torch.tensor([[1.0, -math.inf, -math.inf, -math.inf]])
    hits = routing_hits(logits, torch.tensor([3]), FAMILIES, DOMAINS, ks=(3,))
    assert hits["m_acc_top3"] == 0
    assert hits["d_acc_top3"] == 0


def test_hits_k_larger_than_rows():
    logits = torch.tensor([[0.0, 1.0]])
    hits = routing_hits(logits, torch.tensor([0]), FAMILIES, DOMAINS, ks=(1, 10))
    assert hits["m_acc_top10"] == 1


def make_matrix():
    matrix = AccuracyMatrix()
    # rows: after training experience i; columns: test experience j
    table = [
        [80.0],
        [60.0, 70.0],
        [50.0, 75.0, 90.0],
        [40.0, 65.0, 85.0, 95.0],
    ]
    for i, row in enumerate(table):
        for j, value in enumerate(row):
            matrix.record("d_acc", i, j, value)
    return matrix


def test_final_average_uses_last_row():
    assert make_matrix().final_average("d_acc") == pytest.approx((40 + 65 + 85 + 95) / 4)


def test_forgetting_uses_best_earlier_value():
    # E1: best 80 -> 40 = 40; E2: best 75 -> 65 = 10; E3: 90 -> 85 = 5.
    assert make_matrix().forgetting("d_acc") == pytest.approx((40 + 10 + 5) / 3)


def test_forgetting_nan_with_one_row():
    matrix = AccuracyMatrix()
    matrix.record("d_acc", 0, 0, 50.0)
    assert math.isnan(matrix.forgetting("d_acc"))


def test_summary_keys():
    summary = summarize(make_matrix(), ks=(1, 3))
    assert summary["d_forgetting"] == pytest.approx(55 / 3)
    assert "d_acc_top3" in summary


def test_matrix_round_trip():
    matrix = make_matrix()
    again = AccuracyMatrix.from_dict(matrix.to_dict())
    assert again.as_table("d_acc", 4)[3] == matrix.as_table("d_acc", 4)[3]
