"""Winograd's F(2x2, 3x3) and F(4x4, 3x3) convolutions (kernels/winograd_conv.cpp, simclrv2.models.winograd) and
the encoder's Conv2d routing fp32 3x3 layers to them where oneDNN runs AVX2: every pass is checked against float64
references, and the routing against the rules."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import channels_last
from simclrv2.models import conv, conv_rules, winograd
from simclrv2.models.conv import Conv2d
from simclrv2.models.conv_rules import direct_passes
from simclrv2.models.resnet import resnet

# (batch, in, out, height, width): maps that are and are not multiples of both tile widths (the others end in
# partly empty tiles), a one-pixel map, more tiles than one block of the kernel (several blocks, a last one of a few
# rows), in != out both ways
SHAPES = [(3, 32, 32, 14, 14), (2, 32, 32, 7, 7), (4, 64, 64, 4, 4), (2, 16, 32, 5, 9), (2, 48, 16, 2, 3),
          (1, 32, 16, 1, 1), (5, 32, 32, 16, 17)]


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return ((got.double() - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize(("batch", "in_channels", "out_channels", "height", "width"), SHAPES)
def test_the_three_winograd_passes_equal_float64s(winograd_kernels, batch, in_channels, out_channels, height, width,
                                                  tile):
    """Elementwise to float32 rounding for F(2x2); F(4x4)'s transform entries (up to 8) cost it about a decimal
    digit, so its bounds are ten times wider, and its relative error must stay near float32's (measured ~1e-6)."""
    torch.manual_seed(0)
    x = torch.randn(batch, in_channels, height, width)
    weight = torch.randn(out_channels, in_channels, 3, 3) / (3 * in_channels ** 0.5)
    grad_out = torch.randn(batch, out_channels, height, width)
    x64, w64, g64 = x.double(), weight.double(), grad_out.double()
    expected = F.conv2d(x64, w64, padding=1)
    expected_input_grad = torch.nn.grad.conv2d_input(x.shape, w64, g64, padding=1)
    expected_weight_grad = torch.nn.grad.conv2d_weight(x64, weight.shape, g64, padding=1)
    got = winograd.forward(winograd_kernels, channels_last(x), weight, tile)
    got_input_grad = winograd.input_grad(winograd_kernels, grad_out, weight, tile)
    got_weight_grad = winograd.weight_grad(winograd_kernels, channels_last(x), grad_out, tile)
    for result in (got, got_input_grad, got_weight_grad):
        assert result.dtype == torch.float32 and result.is_contiguous(memory_format=torch.channels_last)
    scale = 1 if tile == 2 else 10
    torch.testing.assert_close(got.double(), expected, rtol=1e-5 * scale, atol=1e-5 * scale)
    torch.testing.assert_close(got_input_grad.double(), expected_input_grad, rtol=1e-5 * scale, atol=1e-5 * scale)
    # a sum over every pixel of the batch: float32's error grows with it
    torch.testing.assert_close(got_weight_grad.double(), expected_weight_grad, rtol=1e-5 * scale, atol=1e-4 * scale)
    for result, exact in ((got, expected), (got_input_grad, expected_input_grad),
                          (got_weight_grad, expected_weight_grad)):
        assert relative_error(result, exact) < 1e-6 * scale


def test_the_weight_transforms_are_exact_for_a_single_tap():
    """G g G^T of a kernel with one tap is the outer product of G's column for that tap, and G^T dU G of a one-hot
    dU is the outer product of G's row for that position."""
    weight = torch.zeros(16, 16, 3, 3, dtype=torch.float64)
    weight[3, 5, 1, 1] = 1.0  # the centre tap of output 3, input 5
    u = winograd.transformed_weight(weight)  # (16, 1, 16, 16)
    g_column = torch.tensor([0.0, 0.5, -0.5, 0.0], dtype=torch.float64)
    expected = torch.outer(g_column, g_column).reshape(16)
    torch.testing.assert_close(u[:, 0, 5, 3], expected)
    assert u.abs().sum() == expected.abs().sum()  # nothing anywhere else
    du = torch.zeros(16, 16, 16, dtype=torch.float64)
    du[5, 2, 7] = 1.0  # position (1, 1), input 2, output 7
    grad = winograd.weight_from_transformed(du, out_channels=16, in_channels=16)
    torch.testing.assert_close(grad[7, 2], torch.full((3, 3), 0.25, dtype=torch.float64))  # G's row 1: 1/2 each
    assert grad.abs().sum() == 9 * 0.25


def test_the_f4_weight_transforms_match_the_3x3_taps():
    """F(4x4)'s G (6x3) on one tap, and G^T dU G back: the 1-D transform of the centre tap is G's middle column."""
    weight = torch.zeros(16, 16, 3, 3, dtype=torch.float64)
    weight[3, 5, 1, 1] = 1.0
    u = winograd.transformed_weight(weight, tile=4)  # (36, 1, 16, 16)
    g_column = torch.tensor([0.0, -1 / 6, 1 / 6, 1 / 12, -1 / 12, 0.0], dtype=torch.float64)
    torch.testing.assert_close(u[:, 0, 5, 3], torch.outer(g_column, g_column).reshape(36))
    du = torch.zeros(36, 16, 16, dtype=torch.float64)
    du[35, 2, 7] = 1.0  # position (5, 5): G's last row (0, 0, 1) twice, so only the bottom-right tap
    grad = winograd.weight_from_transformed(du, out_channels=16, in_channels=16)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[2, 2] = 1.0
    torch.testing.assert_close(grad[7, 2], expected)
    assert grad.abs().sum() == 1.0
    with pytest.raises(ValueError, match="not 3"):
        winograd.transformed_weight(weight, tile=3)


# (out, in) channels of a weight: one 16 x 16 block, several blocks each way, an input count that is not a multiple
# of 16 (the forward's last block of inputs is partial)
WEIGHT_SHAPES = [(16, 16), (48, 32), (32, 80), (16, 5), (64, 20)]


def weight_layouts(out_channels: int, in_channels: int) -> list[torch.Tensor]:
    """One weight three ways: contiguous, channels_last (the encoder's) and a strided view (every other output of a
    twice-as-wide weight), so that the compiled transforms read any strides."""
    gen = torch.Generator().manual_seed(out_channels * 100 + in_channels)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=gen)
    wide = torch.randn(2 * out_channels, in_channels, 3, 3, generator=gen)
    wide[::2] = weight
    return [weight, channels_last(weight), wide[::2]]


@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize(("out_channels", "in_channels"), WEIGHT_SHAPES)
def test_the_compiled_weight_transforms_equal_the_pytorch_ones(kernels, out_channels, in_channels, tile):
    """kernels/winograd_weights.cpp against the G ⊗ G GEMMs above (whose single-tap exactness the two tests before
    check): the same U for the forward and, where the swapped convolution's outputs are whole strips, for the input
    gradient, from every layout; the same dW, channels_last. Separable or Kronecker sums differ in float32 rounding
    only; the packing must be the same element for element."""
    for weight in weight_layouts(out_channels, in_channels):
        torch.testing.assert_close(kernels.winograd_transformed_weight(weight, tile, False),
                                   winograd.transformed_weight(weight, tile), rtol=1e-6, atol=1e-6)
        if in_channels % winograd.STRIP == 0:
            torch.testing.assert_close(kernels.winograd_transformed_weight(weight, tile, True),
                                       winograd.transformed_swapped_flipped_weight(weight, tile), rtol=1e-6, atol=1e-6)
    if in_channels % winograd.STRIP == 0:
        du = torch.randn((tile + 2) ** 2, in_channels, out_channels, generator=torch.Generator().manual_seed(tile))
        grad = kernels.winograd_weight_from_transformed(du)
        assert grad.shape == (out_channels, in_channels, 3, 3) and grad.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(grad, winograd.weight_from_transformed(du, out_channels, in_channels),
                                   rtol=1e-5, atol=1e-5)


def test_the_compiled_weight_transforms_refuse_what_they_do_not_compute(kernels):
    weight = torch.randn(16, 16, 3, 3)
    with pytest.raises(RuntimeError, match="tile must be 2 or 4"):
        kernels.winograd_transformed_weight(weight, 3, False)
    for bad in (weight.double(), torch.randn(16, 16, 5, 5), torch.randn(16, 16, 9)):
        with pytest.raises(RuntimeError, match=r"float32 \(K, C, 3, 3\)"):
            kernels.winograd_transformed_weight(bad, 2, False)
    with pytest.raises(RuntimeError, match=r"output channels \(24\) must be a multiple of 16"):
        kernels.winograd_transformed_weight(torch.randn(24, 16, 3, 3), 2, False)
    with pytest.raises(RuntimeError, match=r"output channels \(8\) must be a multiple of 16"):
        kernels.winograd_transformed_weight(torch.randn(16, 8, 3, 3), 2, True)  # the swapped convolution's outputs
    for bad in (torch.randn(25, 16, 16), torch.randn(16, 16, 16).double(), torch.randn(16, 16, 32).transpose(1, 2)):
        with pytest.raises(RuntimeError, match="dU must be"):
            kernels.winograd_weight_from_transformed(bad)
    with pytest.raises(RuntimeError, match="multiples of 16, not 16 and 24"):
        kernels.winograd_weight_from_transformed(torch.randn(36, 16, 24))


def test_the_winograd_kernel_refuses_what_it_does_not_compute(winograd_kernels):
    u = winograd.transformed_weight(torch.randn(16, 16, 3, 3))
    for bad in (torch.randn(2, 16, 5, 5),  # NCHW
                channels_last(torch.randn(2, 24, 5, 5)),  # not a multiple of 16 channels
                channels_last(torch.randn(2, 16, 5, 5, dtype=torch.bfloat16))):
        with pytest.raises(RuntimeError, match="winograd_conv3x3: x must be"):
            winograd_kernels.winograd_conv3x3(bad, u)
    with pytest.raises(RuntimeError, match="transformed weight"):
        winograd_kernels.winograd_conv3x3(channels_last(torch.randn(2, 32, 5, 5)), u)  # u is for 16 inputs
    with pytest.raises(RuntimeError, match="transformed weight"):  # 25 positions: no F(m x m, 3x3) of ours
        winograd_kernels.winograd_conv3x3(channels_last(torch.randn(2, 16, 5, 5)), torch.zeros(25, 1, 16, 16))
    with pytest.raises(RuntimeError, match="map size"):
        winograd_kernels.winograd_weight_grad(channels_last(torch.randn(2, 16, 5, 5)),
                                              channels_last(torch.randn(2, 16, 4, 4)), 2, 1 << 20)
    with pytest.raises(RuntimeError, match="tile must be 2 or 4"):
        winograd_kernels.winograd_weight_grad(channels_last(torch.randn(2, 16, 5, 5)),
                                              channels_last(torch.randn(2, 16, 5, 5)), 3, 1 << 20)
    with pytest.raises(RuntimeError, match="budget must be positive"):
        winograd_kernels.winograd_weight_grad(channels_last(torch.randn(2, 16, 5, 5)),
                                              channels_last(torch.randn(2, 16, 5, 5)), 2, 0)


@pytest.mark.parametrize("tile", winograd.TILES)
def test_a_small_partial_sums_budget_sums_the_positions_in_groups_to_the_same_gradient(winograd_kernels, tile):
    """A many-core CPU's budget case, forced on this one: one position per group (a budget below one position's
    copies), a few per group, and all at once must give the same dU, bit for bit (each position's sum runs over
    the same tiles in the same order)."""
    gen = torch.Generator().manual_seed(5)
    x = channels_last(torch.randn(3, 32, 11, 9, generator=gen))
    grad_out = channels_last(torch.randn(3, 48, 11, 9, generator=gen))
    one_position = torch.get_num_threads() * 32 * 48 * 4  # bytes of every thread's copy of one position
    whole = winograd_kernels.winograd_weight_grad(x, grad_out, tile, winograd.PARTIAL_SUMS_BUDGET_BYTES)
    for budget in (1, 5 * one_position, (tile + 2) ** 2 * one_position - 1):
        torch.testing.assert_close(winograd_kernels.winograd_weight_grad(x, grad_out, tile, budget), whole,
                                   rtol=0, atol=0)
    expected = torch.nn.grad.conv2d_weight(x.double(), (48, 32, 3, 3), grad_out.double(), padding=1)
    grad = winograd.weight_from_transformed(whole, 48, 32).double()
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-3)


def _fake_kernels(winograd_built: bool = True) -> types.SimpleNamespace:
    return types.SimpleNamespace(has_direct_conv=lambda: True, has_winograd_conv=lambda: winograd_built)


def test_the_winograd_rules_cover_fp32_3x3_stride_1_layers_from_16_channels_where_onednn_runs_avx2(monkeypatch):
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)
    kernels = _fake_kernels()
    every = {"forward", "backward-data", "backward-weights"}
    for channels in (16, 32, 64, 128, 256, 512):
        assert direct_passes(1, 3, 1, channels, channels, torch.float32, kernels) == every
        for name in every:
            assert conv_rules.winograd_tile(name, 3, 1, channels, channels, torch.float32, kernels) == 4
    assert direct_passes(1, 3, 1, 16, 32, torch.float32, kernels) == every
    assert direct_passes(1, 3, 1, 1024, 1024, torch.float32, kernels) == frozenset()
    assert direct_passes(1, 3, 1, 512, 1024, torch.float32, kernels) == frozenset()
    assert conv_rules.winograd_tile("forward", 3, 1, 1024, 1024, torch.float32, kernels) is None
    # the first rule that covers a pass names its tile
    monkeypatch.setattr(conv_rules, "FP32_AVX2_WINOGRAD_RULES", (("forward", 16, 64, 2), ("forward", 16, 512, 4)))
    assert conv_rules.winograd_tile("forward", 3, 1, 64, 64, torch.float32, kernels) == 2
    assert conv_rules.winograd_tile("forward", 3, 1, 128, 128, torch.float32, kernels) == 4
    assert direct_passes(1, 3, 1, 128, 128, torch.float32, kernels) == {"forward"}
    monkeypatch.undo()
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)
    for other in ((1, 3, 1, 64, 64, torch.bfloat16), (2, 3, 1, 64, 64, torch.float32), (1, 1, 0, 64, 64, torch.float32),
                  (1, 3, 0, 64, 64, torch.float32), (1, 3, 1, 48, 40, torch.float32), (1, 3, 1, 8, 8, torch.float32)):
        assert direct_passes(*other, kernels) == frozenset(), other
    assert direct_passes(1, 3, 1, 64, 64, torch.float32, _fake_kernels(winograd_built=False)) == frozenset()
    assert direct_passes(1, 3, 1, 64, 64, torch.float32, None) == frozenset()  # kernels off
    # the 16-channel layer keeps the direct kernel's forward and input gradient where Winograd does not run
    direct_16 = {"forward", "backward-data"}
    assert direct_passes(1, 3, 1, 16, 16, torch.float32, _fake_kernels(winograd_built=False)) == direct_16
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", False)
    # AVX-512 with full-width units: no Winograd rules
    monkeypatch.setattr(conv_rules, "AVX512_BF16_WITHOUT_AMX", False)
    assert conv_rules.fp32_winograd_rules() == ()
    assert direct_passes(1, 3, 1, 64, 64, torch.float32, kernels) == frozenset()
    assert direct_passes(1, 3, 1, 16, 16, torch.float32, kernels) == direct_16
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)
    monkeypatch.setattr(conv_rules, "DIRECT_KERNELS", False)
    assert direct_passes(1, 3, 1, 64, 64, torch.float32, kernels) == frozenset()


@pytest.mark.parametrize("avx2", [True, False])
def test_under_bf16_math_our_fp32_kernels_step_aside_for_onednn(monkeypatch, avx2):
    """run.precision = "bf16-math" asks oneDNN to multiply fp32 convolutions in bf16: Winograd's layers, the
    16-channel direct kernel and the fp32 GEMM rules go to oneDNN then, and come back with exact fp32 math; the
    one-channel stem's kernel stays."""
    if not hasattr(torch.backends.mkldnn.conv, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no bf16 fpmath mode")
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", avx2)
    monkeypatch.setattr(conv_rules, "AVX512_BF16_WITHOUT_AMX", not avx2)
    kernels = _fake_kernels()
    exact = {shape: direct_passes(*shape, torch.float32, kernels) for shape in ((1, 3, 1, 64, 64), (1, 3, 1, 16, 16))}
    assert all(exact.values())
    strided_gemm = conv_rules.gemm_passes(2, 16, 256, 512, torch.float32)
    assert bool(strided_gemm) == avx2  # the fp32 GEMM rules are AVX2's
    monkeypatch.setattr(torch.backends.mkldnn.conv, "fp32_precision", "bf16")
    assert not conv_rules.fp32_math_is_exact()
    assert all(direct_passes(*shape, torch.float32, kernels) == frozenset() for shape in exact)
    assert conv_rules.gemm_passes(2, 16, 256, 512, torch.float32) == frozenset()
    assert direct_passes(1, 3, 1, 1, 16, torch.float32, kernels) == {"forward", "backward-weights"}  # the stem
    monkeypatch.setattr(torch.backends.mkldnn.conv, "fp32_precision", "none")
    assert {shape: direct_passes(*shape, torch.float32, kernels) for shape in exact} == exact
    assert conv_rules.gemm_passes(2, 16, 256, 512, torch.float32) == strided_gemm


def test_on_avx512_bf16_without_amx_winograd_takes_3x3_stride_1_layers_from_32_channels(monkeypatch):
    """AMD's Zen 4: oneDNN's AVX-512 kernels, F(4x4, 3x3) from 32 channels; 512's weight gradient stays oneDNN's
    and the 16-channel layer keeps the direct kernel's forward and input gradient."""
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", False)
    monkeypatch.setattr(conv_rules, "AVX512_BF16_WITHOUT_AMX", True)
    assert conv_rules.fp32_winograd_rules() is conv_rules.FP32_AVX512_BF16_WINOGRAD_RULES
    kernels = _fake_kernels()
    every = {"forward", "backward-data", "backward-weights"}
    for channels in (32, 64, 128, 256):
        assert direct_passes(1, 3, 1, channels, channels, torch.float32, kernels) == every
        assert conv_rules.winograd_tile("backward-weights", 3, 1, channels, channels, torch.float32, kernels) == 4
    assert direct_passes(1, 3, 1, 512, 512, torch.float32, kernels) == {"forward", "backward-data"}
    assert direct_passes(1, 3, 1, 16, 16, torch.float32, kernels) == {"forward", "backward-data"}
    assert conv_rules.winograd_tile("forward", 3, 1, 16, 16, torch.float32, kernels) is None  # the direct kernel's
    assert direct_passes(1, 3, 1, 64, 64, torch.bfloat16, kernels) == frozenset()  # bf16 stays oneDNN's
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)  # oneDNN held to AVX2 there: the AVX2 rules decide
    assert conv_rules.fp32_winograd_rules() is conv_rules.FP32_AVX2_WINOGRAD_RULES


@pytest.mark.parametrize(("bf16", "amx", "cap", "expected"), [
    (True, False, None, True), (True, False, "AVX512_CORE", True), (True, False, "AVX2", False),
    (True, True, None, False), (False, False, None, False)])
def test_avx512_bf16_without_amx_names_zen_4s_kind_unless_onednn_is_held_to_avx2(monkeypatch, bf16, amx, cap,
                                                                                 expected):
    from simclrv2 import runtime

    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert runtime.avx512_bf16_without_amx(cap) is expected


def test_winograd_takes_the_weight_gradient_from_the_fp32_avx2_gemm_rule(monkeypatch):
    """A 512->512 layer on 4x4 maps: the GEMM rule names its weight gradient too; the module plans it as ours."""
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)
    monkeypatch.setattr(conv, "patch_kernels_for", lambda x: _fake_kernels())
    layer = Conv2d(512, 512, 3, padding=1, bias=False)
    x = channels_last(torch.randn(2, 512, 4, 4)).requires_grad_()
    passes, direct = layer._plan(x, torch.float32)
    assert direct == {"forward", "backward-data", "backward-weights"} and passes == frozenset()
    monkeypatch.setattr(conv_rules, "FP32_AVX2_WINOGRAD_RULES", ())
    assert layer._plan(x, torch.float32) == ({"backward-weights"}, frozenset())  # the GEMM rule's, without them


def test_the_module_runs_winograd_where_the_rules_say_and_equals_float64s(winograd_kernels, fused, monkeypatch):
    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)
    torch.manual_seed(0)
    reference = nn.Conv2d(32, 32, 3, padding=1, bias=False)
    ours = Conv2d(32, 32, 3, padding=1, bias=False)
    ours.load_state_dict(reference.state_dict())
    ours = ours.to(memory_format=torch.channels_last)
    x = channels_last(torch.randn(3, 32, 9, 11)).requires_grad_()
    grad_out = torch.randn(3, 32, 9, 11)
    y = ours(x)
    assert y.grad_fn.name() == "_CpuConvBackward"
    assert y.grad_fn.direct == {"forward", "backward-data", "backward-weights"} and y.grad_fn.passes == frozenset()
    assert [t is None for t in y.grad_fn.saved_tensors] == [True, False, False]  # x, for the weight gradient
    y.backward(grad_out)
    x64 = x.detach().double().requires_grad_()
    w64 = reference.weight.detach().double().requires_grad_()
    expected = F.conv2d(x64, w64, padding=1)
    expected.backward(grad_out.double())
    # the rules give 32 channels F(4x4): float32 rounding ten times over, as in the kernel's own test
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-3)
    for got, exact in ((y, expected), (x.grad, x64.grad), (ours.weight.grad, w64.grad)):
        assert relative_error(got, exact) < 1e-5
    assert ours.weight.grad.shape == ours.weight.shape


@pytest.mark.parametrize(("width", "in_channels", "layers"), [
    (0.25, 1, [128] * 3 + [64] * 3 + [32] * 3 + [16] * 4),  # a one-channel stem (the demo's), 16 to 128 channels
    (0.5, 3, [256] * 3 + [128] * 3 + [64] * 3 + [32] * 4),
])
def test_an_fp32_resnet_step_with_winograd_stays_as_close_to_float64_as_float32_allows(
        winograd_kernels, fused, monkeypatch, width, in_channels, layers):
    """An encoder on 16 px images (maps of 16 down to 2 px) against the same step in float64: with Winograd on its
    stride-1 3x3 layers, the outputs and every gradient stay within a few times oneDNN's own float32 error (F(4x4)'s
    larger transform entries: measured 1.5e-5 at worst against oneDNN's 3.8e-6), and under 1e-4 relative, far inside
    bf16's rounding (3.9e-3). Relative norms, not elementwise: BatchNorm over 2x2 maps amplifies float32 rounding in
    small entries."""

    def step(dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = resnet(18, width_multiplier=width, cifar_stem=True, in_channels=in_channels)
        model = model.to(memory_format=torch.channels_last)
        for module in model.modules():  # residual BN scales start at zero, which would stop their branch's grads
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
        model = model.to(dtype)
        out = model(torch.randn(4, in_channels, 16, 16).to(dtype))
        direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        (out * direction).sum().backward()
        return out.detach(), {name: p.grad for name, p in model.named_parameters()}

    monkeypatch.setattr(conv_rules, "ONEDNN_RUNS_AVX2", True)
    calls = []
    weight_grad = winograd.weight_grad
    monkeypatch.setattr(winograd, "weight_grad",
                        lambda k, x, g, tile: calls.append((x.shape[1], tile)) or weight_grad(k, x, g, tile))
    ours_out, ours_grads = step(torch.float32)
    # every stride-1 3x3 layer, backward from the top, by the tile its rule names
    assert calls == [(channels, 4) for channels in layers]
    monkeypatch.setattr(conv_rules, "DIRECT_KERNELS", False)
    onednn_out, onednn_grads = step(torch.float32)
    assert len(calls) == len(layers)
    exact_out, exact_grads = step(torch.float64)
    assert relative_error(ours_out, exact_out) < 1e-5 and relative_error(onednn_out, exact_out) < 1e-5
    assert ours_grads.keys() == onednn_grads.keys() == exact_grads.keys()
    for name, exact in exact_grads.items():
        ours, onednn = relative_error(ours_grads[name], exact), relative_error(onednn_grads[name], exact)
        assert ours < max(10 * onednn, 1e-5) and ours < 1e-4, (name, ours, onednn)
