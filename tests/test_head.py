"""The projection head and the networks built from it (docs/recipe.md#projection-head): its layers, truncation for
fine-tuning, the classifier on top, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.models import Classifier, ProjectionHead, SimCLRModel, build_simclr_model, count_parameters, resnet


def _images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- projection head


def test_head_layers_are_linear_bn_relu_and_last_bn_has_no_bias() -> None:
    head = ProjectionHead(16, out_dim=8, num_layers=3)
    assert len(head.layers) == 3
    for i, layer in enumerate(head.layers):
        linear, bn = layer[0], layer[1]
        assert isinstance(linear, nn.Linear) and linear.bias is None
        assert isinstance(bn, nn.BatchNorm1d) and bn.weight is not None
        last = i == 2
        assert (bn.bias is None) == last
        assert isinstance(layer[-1], nn.ReLU) != last
    assert [layer[0].out_features for layer in head.layers] == [16, 16, 8]  # hidden width = in_dim
    assert "layers.2.1.bias" not in head.state_dict()


def test_head_forward_layers_gives_every_intermediate_output() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(12, hidden_dim=10, out_dim=6, num_layers=3).eval()
    x = torch.randn(5, 12)
    outputs = head.forward_layers(x)
    assert len(outputs) == 4 and outputs[0] is x
    assert [o.shape[1] for o in outputs] == [head.output_dim(j) for j in range(4)] == [12, 10, 10, 6]
    torch.testing.assert_close(head(x), outputs[-1])
    assert torch.all(outputs[1] >= 0) and (outputs[-1] < 0).any()  # ReLU inside, none on the output


def test_head_truncation_shares_the_pretrained_modules() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(12, out_dim=6, num_layers=3).eval()
    x = torch.randn(5, 12)
    for j in range(4):
        part = head.truncated(j)
        assert len(part) == j
        assert all(a is b for a, b in zip(part, head.layers, strict=False))
        torch.testing.assert_close(part(x), head.forward_layers(x)[j])
    with torch.no_grad():
        head.truncated(1)[0][0].weight.add_(1.0)  # a change through the truncated head is seen by the head
    torch.testing.assert_close(head.truncated(2)(x), head.forward_layers(x)[2])


@pytest.mark.parametrize("j", [-1, 4])
def test_head_rejects_missing_layers(j: int) -> None:
    head = ProjectionHead(8, num_layers=3)
    with pytest.raises(SimCLRv2Error, match="0 .*to 3"):
        head.truncated(j)
    with pytest.raises(SimCLRv2Error):
        head.output_dim(j)


# ---------------------------------------------------------------- composed networks


def test_simclr_model_outputs_projections() -> None:
    torch.manual_seed(0)
    model = build_simclr_model(18, 0.125, cifar_stem=True, head_layers=2, proj_dim=16)
    assert model.head.in_dim == model.head.hidden_dim == model.encoder.feature_dim == 64
    assert model(_images(4, 3, 16)).shape == (4, 16)
    with pytest.raises(SimCLRv2Error, match="in_dim"):
        SimCLRModel(model.encoder, ProjectionHead(32))


def test_classifier_logits_are_zero_at_init() -> None:
    torch.manual_seed(0)
    model = build_simclr_model(18, 0.125, cifar_stem=True, proj_dim=16)
    classifier = Classifier.from_simclr(model, 1, num_classes=5)
    assert torch.all(classifier.classifier.weight == 0) and torch.all(classifier.classifier.bias == 0)
    assert torch.equal(classifier(_images(4, 3, 16)), torch.zeros(4, 5))


@pytest.mark.parametrize(("j", "width"), [(0, 64), (1, 64), (2, 64), (3, 16)])
def test_from_simclr_keeps_head_layers_up_to_j_and_shares_the_encoder(j: int, width: int) -> None:
    torch.manual_seed(0)
    model = build_simclr_model(18, 0.125, cifar_stem=True, proj_dim=16).eval()
    classifier = Classifier.from_simclr(model, j, num_classes=3).eval()
    assert classifier.encoder is model.encoder
    assert len(classifier.head) == j
    assert all(a is b for a, b in zip(classifier.head, model.head.layers, strict=False))
    assert classifier.feature_dim == classifier.classifier.in_features == width
    x = _images(4, 3, 16)
    expected = model.head.forward_layers(model.encoder(x))[j]
    torch.testing.assert_close(classifier.forward_features(x), expected)
    assert classifier(x).shape == (4, 3)


def test_classifier_on_bare_encoder_and_bad_class_count() -> None:
    encoder = resnet(18, 0.125, cifar_stem=True)
    with pytest.raises(SimCLRv2Error, match="num_classes"):
        Classifier(encoder, nn.Sequential(), encoder.feature_dim, 0)
    with pytest.raises(SimCLRv2Error):
        Classifier.from_simclr(build_simclr_model(18, 0.125, head_layers=2), 3, 10)


def test_tiny_resnet_overfits_one_batch() -> None:
    torch.manual_seed(0)
    encoder = resnet(18, 0.125, cifar_stem=True)
    model = Classifier(encoder, nn.Sequential(), encoder.feature_dim, num_classes=4)
    x = _images(8, 3, 8, seed=1)
    y = torch.arange(8) % 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-6)  # zero-init classifier
    assert losses[-1] < 0.1 * losses[0]


def test_count_parameters_counts_every_element() -> None:
    head = ProjectionHead(4, hidden_dim=3, out_dim=2, num_layers=2)
    assert count_parameters(head) == 4 * 3 + 2 * 3 + 3 * 2 + 2  # last BN: γ only
