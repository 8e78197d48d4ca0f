from types import SimpleNamespace

import pytest
import torch

from cmrkit.encoder import QueryEncoder
from cmrkit.router import ModelEmbeddingHead, Router


def experience(labels):
    return SimpleNamespace(classes_in_this_experience=set(labels))


def test_head_grows_to_max_label():
    head = ModelEmbeddingHead(8)
    head.adaptation(experience([0, 1, 2]))
    assert head.num_rows == 3
    head.adaptation(experience([1, 5]))
    assert head.num_rows == 6


def test_head_keeps_old_rows_when_growing():
    head = ModelEmbeddingHead(8)
    head.add_labels([0, 1])
    before = head.weight.detach().clone()
    head.add_labels([2, 3])
    assert torch.equal(head.weight[:2].detach(), before)


def test_head_masks_unseen_rows():
    head = ModelEmbeddingHead(4)
    head.add_labels([0, 3])  # rows 1 and 2 exist but were never trained on
    logits = head(torch.nn.functional.normalize(torch.randn(2, 4), dim=-1))
    assert torch.isinf(logits[:, 1]).all()
    assert torch.isinf(logits[:, 2]).all()
    assert torch.isfinite(logits[:, [0, 3]]).all()


def test_head_add_labels_reports_new_only():
    head = ModelEmbeddingHead(4)
    assert head.add_labels([0, 1]) == [0, 1]
    assert head.add_labels([1, 2]) == [2]


def test_head_logits_are_cosine_over_tau():
    head = ModelEmbeddingHead(3, tau=0.5)
    head.add_labels([0])
    with torch.no_grad():
        head.weight[0] = torch.tensor([2.0, 0.0, 0.0])
    query = torch.tensor([[1.0, 0.0, 0.0]])
    assert head(query)[0, 0].item() == pytest.approx(2.0)


def test_head_rejects_bad_tau():
    with pytest.raises(ValueError, match="tau"):
        ModelEmbeddingHead(4, tau=0.0)


def test_router_scores_text(cmrkit_tiny_encoder):
    router = Router(QueryEncoder(str(cmrkit_tiny_encoder), max_length=16), dim=8)
    router.head.add_labels([0, 1, 2])
    batch = router.encoder.tokenize(["translate spanish", "detect objects image"])
    logits = router(batch)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


def test_encoder_rejects_bad_pooling(cmrkit_tiny_encoder):
    with pytest.raises(ValueError, match="pooling 'max'"):
        QueryEncoder(str(cmrkit_tiny_encoder), pooling="max")


def test_encoder_truncates_to_max_length(cmrkit_tiny_encoder):
    encoder = QueryEncoder(str(cmrkit_tiny_encoder), max_length=5)
    batch = encoder.tokenize(["please " * 40])
    assert batch["input_ids"].shape[1] == 5


def test_freeze_lower_layers_keeps_top_trainable(cmrkit_tiny_encoder):
    encoder = QueryEncoder(str(cmrkit_tiny_encoder))
    encoder.freeze_lower_layers(1)
    trainable = {name for name, p in encoder.backbone.named_parameters() if p.requires_grad}
    assert trainable
    assert all(name.startswith("encoder.layer.0.") for name in trainable)


def test_freeze_all_layers(cmrkit_tiny_encoder):
    encoder = QueryEncoder(str(cmrkit_tiny_encoder))
    encoder.freeze_lower_layers(0)
    assert not any(p.requires_grad for p in encoder.backbone.parameters())


def test_freeze_rejects_negative(cmrkit_tiny_encoder):
    encoder = QueryEncoder(str(cmrkit_tiny_encoder))
    with pytest.raises(ValueError, match="trainable_layers -1"):
        encoder.freeze_lower_layers(-1)
