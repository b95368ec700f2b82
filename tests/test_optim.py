import math

import pytest
import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.optim import LARS, lr_at, param_groups, scaled_learning_rate, set_lr, warmup_steps_for


def lars_by_hand(w, g, v, lr, momentum, wd, eta, excluded):
    """One LARS step in float64, written from the SPEC formula."""
    if excluded:
        update, trust = g, 1.0
    else:
        w_norm, g_norm = w.norm().item(), g.norm().item()
        trust = eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
        update = g + wd * w
    v = momentum * v + lr * trust * update
    return w - v, v


@pytest.mark.parametrize("case", ["weight", "excluded", "zero_weight"])
def test_two_lars_steps_match_a_hand_computation(case):
    g = torch.Generator().manual_seed(0)
    w0 = torch.zeros(3, 4, dtype=torch.float64) if case == "zero_weight" else torch.randn(3, 4, generator=g,
                                                                                           dtype=torch.float64)
    grads = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    param = nn.Parameter(w0.clone())
    lr, momentum, wd, eta = 0.7, 0.9, 1e-2, 1e-3
    optimizer = LARS([{"params": [param], "lars_exclude": case == "excluded",
                       "weight_decay": 0.0 if case == "excluded" else wd}],
                     lr=lr, momentum=momentum, weight_decay=wd, trust_coefficient=eta, eps=0.0)
    w, v = w0.clone(), torch.zeros_like(w0)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        w, v = lars_by_hand(w, grad, v, lr, momentum, wd if case != "excluded" else 0.0, eta, case == "excluded")
        torch.testing.assert_close(param.detach(), w, rtol=1e-12, atol=1e-14)


def test_trust_ratio_makes_the_step_size_independent_of_the_gradient_scale():
    def first_step(scale):
        param = nn.Parameter(torch.ones(10))
        param.grad = torch.full((10,), scale)
        LARS([{"params": [param]}], lr=1.0, momentum=0.0, weight_decay=0.0).step()
        return (torch.ones(10) - param.detach()).norm().item()

    assert first_step(1e-3) == pytest.approx(first_step(1e3), rel=1e-4)
    assert first_step(1.0) == pytest.approx(1e-3 * math.sqrt(10), rel=1e-4)  # η‖w‖


def test_param_groups_exclude_bn_parameters_and_biases():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    adapted, excluded = param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in adapted["params"]) == ["0.weight", "3.weight"]
    assert sorted(names[id(p)] for p in excluded["params"]) == ["0.bias", "1.bias", "1.weight", "3.bias"]
    assert adapted["weight_decay"] == 1e-4 and not adapted["lars_exclude"]
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]


def test_frozen_parameters_are_left_out():
    model = nn.Linear(3, 3)
    model.bias.requires_grad_(False)
    groups = param_groups(model, 0.0)
    assert sum(len(group["params"]) for group in groups) == 1


def test_optimizer_state_round_trips():
    model = nn.Linear(3, 2)
    optimizer = LARS(param_groups(model, 1e-4), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    again = LARS(param_groups(model, 1e-4), lr=0.1)
    again.load_state_dict(optimizer.state_dict())
    for p in model.parameters():
        torch.testing.assert_close(again.state[p]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])


def test_bad_lars_settings_are_refused():
    with pytest.raises(SimCLRv2Error, match="LARS"):
        LARS(nn.Linear(2, 2).parameters(), lr=0.1, momentum=1.5)


def test_learning_rate_scaling_rules():
    assert scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 256, "sqrt") == pytest.approx(1.2)
    with pytest.raises(SimCLRv2Error, match="linear, sqrt"):
        scaled_learning_rate(0.1, 256, "cubic")


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    total, warmup, peak = 100, 10, 2.0
    lrs = [lr_at(step, total, peak, warmup) for step in range(total + 1)]
    assert lrs[:10] == pytest.approx([peak * (s + 1) / 10 for s in range(10)])
    assert lrs[9] == peak and lrs[10] == peak
    assert lrs[55] == pytest.approx(peak / 2)  # the cosine's midpoint
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_schedule_without_warmup_starts_at_the_peak():
    assert lr_at(0, 50, 1.0, 0) == 1.0
    assert warmup_steps_for(1000, 0.05) == 50


def test_set_lr_sets_every_group():
    optimizer = LARS(param_groups(nn.Linear(2, 2), 0.0), lr=0.1)
    set_lr(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]
