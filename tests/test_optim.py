import copy
import io
import math

import pytest
import torch
from torch import nn

from simclrv2.errors import SimCLRv2Error
from simclrv2.optim import LARS, build_optimizer, lr_at, param_groups, scaled_learning_rate, set_lr, warmup_steps_for


def lars_by_hand(w, g, v, lr, momentum, wd, eta, excluded):
    """One LARS step in float64, from the docs/recipe.md#lars formula with Python numbers for the norms."""
    if excluded:
        update, trust = g, 1.0
    else:
        w_norm, g_norm = w.norm().item(), g.norm().item()
        trust = eta * w_norm / (g_norm + wd * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
        update = g + wd * w
    v = momentum * v + lr * trust * update
    return w - v, v


def test_one_lars_step_on_explicit_numbers():
    """w = (3, 4), g = (0.6, 0.8): ‖w‖ = 5, ‖g‖ = 1. With wd = 0.1, η = 0.01, lr = 2: g' = (0.9, 1.2),
    trust = 0.01·5 / (1 + 0.1·5) = 1/30, v = 2·(1/30)·g' = (0.06, 0.08), w = (2.94, 3.92)."""
    param = nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    param.grad = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    optimizer = LARS([param], lr=2.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01, eps=0.0)
    optimizer.step()
    torch.testing.assert_close(param.detach(), torch.tensor([[2.94, 3.92]], dtype=torch.float64))
    # second step, g = 0: trust is 1 and the update is the decay alone: v = 0.9·(0.06, 0.08) + 2·0.1·w
    param.grad = torch.zeros_like(param)
    optimizer.step()
    v = torch.tensor([[0.054 + 0.2 * 2.94, 0.072 + 0.2 * 3.92]], dtype=torch.float64)
    torch.testing.assert_close(param.detach(), torch.tensor([[2.94, 3.92]], dtype=torch.float64) - v)


@pytest.mark.parametrize("case", ["weight", "excluded", "zero_weight"])
def test_two_lars_steps_match_a_hand_computation(case):
    """(a) a weight: decay + trust ratio; (b) an excluded BN/bias parameter: plain momentum SGD even though its
    group names a weight decay; (c) a zero weight: trust 1 on the first step, adapted on the second."""
    g = torch.Generator().manual_seed(0)
    shape = (4,) if case == "excluded" else (3, 4)
    w0 = torch.zeros(shape, dtype=torch.float64) if case == "zero_weight" else torch.randn(
        shape, generator=g, dtype=torch.float64)
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2)]
    param = nn.Parameter(w0.clone())
    lr, momentum, wd, eta = 0.7, 0.9, 1e-2, 1e-3
    excluded = case == "excluded"
    optimizer = LARS([{"params": [param], "lars_exclude": excluded}], lr=lr, momentum=momentum, weight_decay=wd,
                     trust_coefficient=eta, eps=0.0)
    w, v = w0.clone(), torch.zeros_like(w0)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        w, v = lars_by_hand(w, grad, v, lr, momentum, wd, eta, excluded)
        torch.testing.assert_close(param.detach(), w, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=0)  # the step leaves the gradient alone


def test_each_tensor_gets_its_own_trust_ratio_and_gradless_tensors_are_skipped():
    """The trust ratios are computed in one batch; they must still land on the right tensors."""
    g = torch.Generator().manual_seed(1)
    shapes = [(5, 3), (2, 2, 3, 3), (7, 1), (4, 4)]
    scales = [1.0, 10.0, 0.01, 3.0]  # very different norms, so a mix-up changes the step
    params = [nn.Parameter(s * torch.randn(shape, generator=g, dtype=torch.float64))
              for shape, s in zip(shapes, scales, strict=True)]
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes[:3]]
    for p, grad in zip(params, grads, strict=False):
        p.grad = grad.clone()
    before = [p.detach().clone() for p in params]
    LARS(params, lr=0.5, momentum=0.9, weight_decay=1e-3, trust_coefficient=1e-2, eps=0.0).step()
    for w0, grad, p in zip(before, grads, params, strict=False):
        expected, _ = lars_by_hand(w0, grad, torch.zeros_like(w0), 0.5, 0.9, 1e-3, 1e-2, excluded=False)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(params[3].detach(), before[3])  # no gradient: untouched


def test_trust_ratio_makes_the_step_size_independent_of_the_gradient_scale():
    def first_step(scale):
        param = nn.Parameter(torch.ones(10))
        param.grad = torch.full((10,), scale)
        LARS([param], lr=1.0, momentum=0.0, weight_decay=0.0).step()
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


def test_lars_with_param_groups_steps_bn_parameters_by_plain_momentum_sgd():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(6, 3, dtype=torch.float64)).pow(2).sum().backward()
    LARS(param_groups(model, 0.5), lr=0.1, weight_decay=0.5).step()
    for name, p in model.named_parameters():
        if p.ndim == 1:  # bias and BN γ, β: w − lr·g, no decay, no trust ratio
            torch.testing.assert_close(p.detach(), before[name] - 0.1 * p.grad)
        else:
            expected, _ = lars_by_hand(before[name], p.grad, 0.0, 0.1, 0.9, 0.5, 1e-3, excluded=False)
            torch.testing.assert_close(p.detach(), expected)


def test_frozen_parameters_are_left_out():
    model = nn.Linear(3, 3)
    model.bias.requires_grad_(False)
    groups = param_groups(model, 0.0)
    assert [len(group["params"]) for group in groups] == [1, 0]


def test_optimizer_state_round_trips_and_the_next_step_is_identical():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = LARS(param_groups(model, 1e-4), lr=0.1)
    x = torch.randn(8, 3)
    model(x).sum().backward()
    optimizer.step()
    resumed = copy.deepcopy(model)
    again = LARS(param_groups(resumed, 1e-4), lr=0.3)  # the saved lr wins, as for any torch optimizer
    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)  # through bytes, as a checkpoint goes
    saved.seek(0)
    again.load_state_dict(torch.load(saved))
    assert [g["lr"] for g in again.param_groups] == [0.1, 0.1]
    assert [g["lars_exclude"] for g in again.param_groups] == [False, True]
    for m, opt in ((model, optimizer), (resumed, again)):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_lars_settings_are_refused():
    for settings in ({"momentum": 1.5}, {"lr": -0.1}, {"weight_decay": -1.0}, {"trust_coefficient": 0.0},
                     {"eps": -1.0}):
        with pytest.raises(SimCLRv2Error, match="LARS"):
            LARS(nn.Linear(2, 2).parameters(), **{"lr": 0.1, **settings})


def test_learning_rate_scaling_rules():
    assert scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_learning_rate(0.3, 256, "linear") == pytest.approx(0.3)
    assert scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 256, "sqrt") == pytest.approx(1.2)
    with pytest.raises(SimCLRv2Error, match="linear, sqrt"):
        scaled_learning_rate(0.1, 256, "cubic")
    with pytest.raises(SimCLRv2Error, match="batch_size"):
        scaled_learning_rate(0.1, 0, "linear")


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_zero():
    total, warmup, peak = 100, 10, 2.0
    lrs = [lr_at(step, total, peak, warmup) for step in range(total + 1)]
    assert lrs[:10] == pytest.approx([peak * (s + 1) / 10 for s in range(10)])  # linear, first step > 0
    assert lrs[9] == peak and lrs[10] == peak  # the last warmup step and the first decay step
    assert lrs[55] == pytest.approx(peak / 2)  # the cosine's midpoint, (100 - 10) / 2 steps after warmup
    assert lrs[10 + 30] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi / 3)))
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # strictly decaying
    assert lr_at(150, total, peak, warmup) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at 0


def test_schedule_without_warmup_starts_at_the_peak():
    assert lr_at(0, 50, 1.0, 0) == 1.0
    assert lr_at(25, 50, 1.0, 0) == pytest.approx(0.5)


def test_schedule_errors():
    for step, total, warmup in ((-1, 10, 0), (0, 0, 0), (0, 10, 11), (0, 10, -1)):
        with pytest.raises(SimCLRv2Error, match="lr_at"):
            lr_at(step, total, 1.0, warmup)


def test_warmup_steps_are_a_rounded_fraction_of_the_run():
    assert warmup_steps_for(1000, 0.05) == 50
    assert warmup_steps_for(39, 0.1) == 4
    assert warmup_steps_for(1000, 0.0) == 0
    with pytest.raises(SimCLRv2Error, match="fraction"):
        warmup_steps_for(100, 1.5)


def test_set_lr_sets_every_group():
    optimizer = LARS(param_groups(nn.Linear(2, 2), 0.0), lr=0.1)
    set_lr(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]
    optimizer.param_groups[1]["lr_scale"] = 0.1
    set_lr(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.05]


def test_plain_modules_are_excluded_from_decay_and_adaptation():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    adapted, excluded = param_groups(model, 1e-4, plain=[model[1]])
    assert [p.shape for p in adapted["params"]] == [torch.Size([4, 3])]
    assert {tuple(p.shape) for p in excluded["params"]} == {(4,), (2, 4), (2,)}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_sgd_and_adamw_run_pytorchs_fused_step_on_cpu_and_step_as_its_default_does(name):
    """The fused step is a faster way to the same update: ten steps (with weight decay on one group only, and rates
    set per step as the stages do) end where PyTorch's default step ends, to float32 rounding."""
    torch.manual_seed(0)
    # no bias before the BN: its gradient would be rounding noise, which Adam scales up to a full step
    model = nn.Sequential(nn.Linear(12, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    start, twin = copy.deepcopy(model), copy.deepcopy(model)
    fused = build_optimizer(param_groups(model, 1e-2), name, 0.05, 1e-2, 0.9)
    assert all(group["fused"] for group in fused.param_groups)
    default_groups = [{k: v for k, v in group.items() if k != "lars_exclude"} for group in param_groups(twin, 1e-2)]
    optimizer = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
    options = {"momentum": 0.9} if name == "sgd" else {"betas": (0.9, 0.999)}
    default = optimizer(default_groups, lr=0.05, weight_decay=1e-2, **options)
    assert not any(group.get("fused") for group in default.param_groups)
    asked_default = build_optimizer(param_groups(copy.deepcopy(model), 1e-2), name, 0.05, 1e-2, 0.9, fused=False)
    assert type(asked_default) is optimizer and not any(g.get("fused") for g in asked_default.param_groups)
    for step in range(10):
        x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
        for net, opt in ((model, fused), (twin, default)):
            set_lr(opt, 0.05 * (1 - step / 10))
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for p, q, p0 in zip(model.parameters(), twin.parameters(), start.parameters(), strict=True):
        assert (p - p0).abs().max() > 1e-3  # every tensor moved
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
