import math

import pytest
import torch
import torch.nn.functional as F

from simclrv2.errors import SimCLRv2Error
from simclrv2.losses import distillation_loss, distillation_objective, nt_xent_loss


def naive_nt_xent(z1, z2, temperature, extra=None):
    """Straight from the SPEC: a Python loop over the 2N anchors, in float64."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    candidates = [z[k] for k in range(2 * n)]
    if extra is not None:
        candidates += [e for e in extra.double()]
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        numerator = torch.exp(z[i] @ z[p] / temperature)
        denominator = sum(torch.exp(z[i] @ c / temperature) for k, c in enumerate(candidates) if k != i)
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 0.5), (5, 8, 0.1), (16, 4, 1.0)])
def test_matches_a_naive_per_anchor_loop_in_value_and_gradient(n, d, tau):
    g = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    ours = nt_xent_loss(z1, z2, tau)
    ours_grads = torch.autograd.grad(ours, (z1, z2))
    reference = naive_nt_xent(z1, z2, tau)
    reference_grads = torch.autograd.grad(reference, (z1, z2))
    torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6)


def test_closed_form_for_identical_views_and_orthogonal_images():
    """Positives have similarity 1, the 2N-2 negatives 0: loss = -log(e^{1/τ} / (e^{1/τ} + 2N - 2))."""
    n, tau = 4, 0.5
    z = torch.eye(n, 8)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * n - 2))
    assert nt_xent_loss(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-6)


def test_is_invariant_to_the_scale_of_the_projections():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    torch.testing.assert_close(nt_xent_loss(z1, z2), nt_xent_loss(3.7 * z1, 0.2 * z2))


def test_extra_negatives_are_extra_candidates():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    memory = F.normalize(torch.randn(7, 6, generator=g), dim=1)
    ours = nt_xent_loss(z1, z2, 0.2, extra_negatives=memory)
    torch.testing.assert_close(ours.double(), naive_nt_xent(z1, z2, 0.2, memory), rtol=1e-5, atol=1e-6)
    assert ours > nt_xent_loss(z1, z2, 0.2)  # more negatives can only raise the loss


def test_bf16_autocast_still_computes_the_loss_in_float32():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nt_xent_loss(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, nt_xent_loss(z1, z2, 0.1), rtol=2e-2, atol=2e-2)


def test_fake_two_process_gather_equals_the_single_process_loss_on_the_whole_batch():
    """Two 'processes' in one autograd graph, with different data: each computes its loss over its own anchors
    against both processes' rows (the other's rows normalised, as the real gather delivers them). The mean of
    the two losses and its gradients equal the single-process loss on the concatenated batch; this checks the
    offsets of positives and self-similarities, for rank 0 and rank 1."""
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    a1, a2, b1, b2 = rows

    def fake_gather(rank, others):
        calls = iter(others)

        def gather(x):
            other = F.normalize(next(calls), dim=1)
            return (torch.cat([x, other]) if rank == 0 else torch.cat([other, x])), rank * x.shape[0]

        return gather

    loss0 = nt_xent_loss(a1, a2, 0.5, gather=fake_gather(0, [b1, b2]))
    loss1 = nt_xent_loss(b1, b2, 0.5, gather=fake_gather(1, [a1, a2]))
    distributed = (loss0 + loss1) / 2
    single = nt_xent_loss(torch.cat([a1, b1]), torch.cat([a2, b2]), 0.5)
    torch.testing.assert_close(distributed, single, rtol=1e-10, atol=1e-10)
    for ours, reference in zip(torch.autograd.grad(distributed, rows), torch.autograd.grad(single, rows),
                               strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-10)
    assert loss0.item() != pytest.approx(loss1.item())  # the processes really hold different data


def test_shape_and_temperature_errors():
    with pytest.raises(SimCLRv2Error, match="same shape"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(SimCLRv2Error, match="temperature"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0)
    with pytest.raises(SimCLRv2Error, match="at least 2"):
        nt_xent_loss(torch.randn(1, 3), torch.randn(1, 3))


def test_distillation_loss_against_a_hand_computation():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    # τ = 1: P_T = softmax(0, 1) = (1/(1+e), e/(1+e)); log P_S = (log(e/(1+e)), log(1/(1+e)))
    e = math.e
    p_t = (1 / (1 + e), e / (1 + e))
    log_p_s = (math.log(e / (1 + e)), math.log(1 / (1 + e)))
    expected = -(p_t[0] * log_p_s[0] + p_t[1] * log_p_s[1])
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_matches_the_formula_and_ignores_the_teachers_gradient():
    g = torch.Generator().manual_seed(4)
    student = torch.randn(5, 7, generator=g, requires_grad=True)
    teacher = torch.randn(5, 7, generator=g, requires_grad=True)
    tau = 0.1
    loss = distillation_loss(student, teacher, tau)
    expected = -(F.softmax(teacher / tau, 1) * F.log_softmax(student / tau, 1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_lower_temperature_sharpens_the_teacher():
    student, teacher = torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 0.0]])
    # with a uniform student, the loss is log(3) whatever the teacher: cross-entropy of a uniform P_S
    assert distillation_loss(student, teacher, 0.1).item() == pytest.approx(math.log(3), rel=1e-6)
    sharp = F.softmax(teacher / 0.1, 1)
    soft = F.softmax(teacher / 1.0, 1)
    assert sharp[0, 0] > soft[0, 0]


def test_distillation_objective_weighs_the_labelled_term_by_one_minus_alpha():
    g = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0])
    mixed = distillation_objective(student, teacher, 1.0, labels, alpha=0.25)
    expected = 0.75 * F.cross_entropy(student, labels) + 0.25 * distillation_loss(student, teacher, 1.0)
    torch.testing.assert_close(mixed, expected)
    assert distillation_objective(student, teacher, 1.0) == distillation_loss(student, teacher, 1.0)
    with pytest.raises(SimCLRv2Error, match="labels"):
        distillation_objective(student, teacher, 1.0, None, alpha=0.5)
