"""Linear evaluation on cached features: standardisation folded into the probe, learning, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from simclrv2.errors import SimCLRv2Error
from simclrv2.eval.linear_probe import evaluate_linear_probe, feature_stats, fit_linear_probe, fold_standardisation


def gaussian_classes(n: int, dim: int, num_classes: int, separation: float, seed: int):
    """Features drawn around one centre per class, then given wildly different scales and offsets per
    dimension, as raw encoder features have."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234)) * separation
    labels = torch.arange(n) % num_classes
    x = centres[labels] + torch.randn(n, dim, generator=g)
    scale = torch.logspace(-2, 2, dim)
    offset = torch.linspace(-50, 50, dim)
    return x * scale + offset, labels


def top1(probe: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return (evaluate_linear_probe(probe, x).argmax(1) == y).float().mean().item()


def optimal_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.nn.Linear:
    """Reference: the cross-entropy minimum over the standardised features, by full-batch L-BFGS."""
    mean, std = feature_stats(x)
    z = (x - mean) / std
    linear = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(z), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return fold_standardisation(linear, mean, std)


def test_feature_stats_are_the_column_mean_and_std_with_constant_columns_unscaled():
    x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    mean, std = feature_stats(x)
    torch.testing.assert_close(mean, torch.tensor([3.0, 5.0, 5.0]))
    torch.testing.assert_close(std, torch.tensor([(8 / 3) ** 0.5, 1.0, (26 / 3) ** 0.5]))


def test_feature_stats_keep_float64_precision_under_a_large_offset():
    x = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0)) * 0.01 + 1000.0
    mean, std = feature_stats(x)
    expected_var, expected_mean = torch.var_mean(x.double(), dim=0, correction=0)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(std.double(), expected_var.sqrt(), rtol=1e-4, atol=0)


def test_folded_probe_on_raw_features_equals_standardise_then_linear():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) * 30 + 100
    mean, std = feature_stats(x)
    linear = torch.nn.Linear(6, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(3, 6, generator=g))
        linear.bias.copy_(torch.randn(3, generator=g))
        expected = linear((x - mean) / std)
    folded = fold_standardisation(linear, mean, std)
    torch.testing.assert_close(evaluate_linear_probe(folded, x), expected, atol=1e-4, rtol=1e-4)


def test_linearly_separable_data_is_learned_to_100_percent():
    x, y = gaussian_classes(800, 20, 4, separation=4.0, seed=0)
    x_test, y_test = gaussian_classes(400, 20, 4, separation=4.0, seed=1)
    probe = fit_linear_probe(x, y, 4, epochs=40, batch_size=400)
    assert top1(probe, x, y) == 1.0
    assert top1(probe, x_test, y_test) >= 0.99


def test_probe_applies_to_raw_features_whatever_their_scale():
    # Standardisation removes any per-dimension affine change, so the fitted probes must agree.
    x, y = gaussian_classes(600, 10, 3, separation=0.7, seed=2)
    x_test, _ = gaussian_classes(300, 10, 3, separation=0.7, seed=3)
    scale, offset = torch.linspace(0.1, 10, 10), torch.linspace(5, -5, 10)
    probe = fit_linear_probe(x, y, 3, epochs=20, batch_size=300)
    moved = fit_linear_probe(x * scale + offset, y, 3, epochs=20, batch_size=300)
    torch.testing.assert_close(evaluate_linear_probe(moved, x_test * scale + offset),
                               evaluate_linear_probe(probe, x_test), atol=2e-3, rtol=2e-3)


def test_harder_task_clearly_beats_chance_and_nears_the_optimum():
    x, y = gaussian_classes(2000, 16, 5, separation=0.45, seed=4)
    x_test, y_test = gaussian_classes(2000, 16, 5, separation=0.45, seed=5)
    probe = fit_linear_probe(x, y, 5, epochs=30, batch_size=256)
    reference = top1(optimal_probe(x, y, 5), x_test, y_test)
    accuracy = top1(probe, x_test, y_test)
    assert 0.55 < reference < 0.95  # hard, not hopeless: chance is 0.2
    assert accuracy > reference - 0.02


def test_fitting_is_deterministic_given_the_seed():
    x, y = gaussian_classes(500, 8, 3, separation=0.5, seed=6)
    a, b, c = (fit_linear_probe(x, y, 3, epochs=3, batch_size=64, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)  # another seed shuffles the batches differently


def test_weight_decay_shrinks_the_weights():
    x, y = gaussian_classes(400, 8, 3, separation=2.0, seed=7)
    _, std = feature_stats(x)
    free = fit_linear_probe(x, y, 3, epochs=30, batch_size=100)
    decayed = fit_linear_probe(x, y, 3, epochs=30, batch_size=100, weight_decay=1.0)
    # Compare in standardised space, where the penalty applies.
    assert (decayed.weight * std).norm() < 0.5 * (free.weight * std).norm()


def test_probe_is_a_cpu_linear_layer_and_constant_features_stay_finite():
    x, y = gaussian_classes(300, 5, 3, separation=3.0, seed=8)
    x = torch.cat([x, torch.full((300, 1), 7.0)], dim=1)  # a dead unit: zero variance
    probe = fit_linear_probe(x, y, 3, epochs=20)
    assert isinstance(probe, torch.nn.Linear) and probe.weight.device.type == "cpu"
    assert (probe.in_features, probe.out_features) == (6, 3)
    assert torch.isfinite(probe.weight).all() and torch.isfinite(probe.bias).all()
    logits = evaluate_linear_probe(probe, x)
    assert logits.shape == (300, 3)
    torch.testing.assert_close(logits, probe(x).detach())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: fit_linear_probe(x, y, 2), r"labels must lie in \[0, 2\)"),
        (lambda x, y: fit_linear_probe(x, y[:5], 3), "expected 30 labels"),
        (lambda x, y: fit_linear_probe(x.long(), y, 3), "float"),
        (lambda x, y: fit_linear_probe(x * float("nan"), y, 3), "nan or inf"),
        (lambda x, y: fit_linear_probe(x, y, 3, epochs=0), "epochs >= 1"),
        (lambda x, y: evaluate_linear_probe(torch.nn.Linear(4, 3), x), r"takes \(N, 4\) features"),
    ],
)
def test_bad_inputs_are_errors(call, message):
    x, y = gaussian_classes(30, 5, 3, separation=1.0, seed=9)
    with pytest.raises(SimCLRv2Error, match=message):
        call(x, y)
