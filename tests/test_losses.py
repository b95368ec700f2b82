import math

import pytest
import torch
import torch.nn.functional as F

from simclrv2.errors import SimCLRv2Error
from simclrv2.losses import distillation_loss, distillation_objective, nt_xent_loss


def naive_anchor_losses(z1, z2, temperature, extra=None):
    """From docs/recipe.md#nt-xent, in float64: one loss per anchor, anchors i < N are view 1 of image i, the rest
    view 2 of image i - N; candidates are all 2N views except the anchor itself, plus the ``extra`` rows."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    candidates = [z[k] for k in range(2 * n)] + ([] if extra is None else list(extra.double()))
    losses = []
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        numerator = torch.exp(z[i] @ z[p] / temperature)
        denominator = sum(torch.exp(z[i] @ c / temperature) for k, c in enumerate(candidates) if k != i)
        losses.append(-torch.log(numerator / denominator))
    return losses


def naive_nt_xent(z1, z2, temperature, extra=None):
    losses = naive_anchor_losses(z1, z2, temperature, extra)
    return sum(losses) / len(losses)


def random_views(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    z2 = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    return z1, z2


@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 0.5), (5, 8, 0.1), (16, 4, 1.0), (7, 32, 0.05)])
def test_matches_a_naive_per_anchor_loop_in_value_and_gradient(n, d, tau):
    z1, z2 = random_views(n, d, seed=n)
    ours = nt_xent_loss(z1, z2, tau)
    ours_grads = torch.autograd.grad(ours, (z1, z2))
    reference = naive_nt_xent(z1, z2, tau)
    reference_grads = torch.autograd.grad(reference, (z1, z2))
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_float32_inputs_give_a_float32_loss_close_to_the_float64_reference():
    z1, z2 = random_views(6, 5, seed=11, dtype=torch.float32)
    ours = nt_xent_loss(z1, z2, 0.2)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), naive_nt_xent(z1, z2, 0.2), rtol=1e-5, atol=1e-6)


def test_closed_form_for_identical_views_and_orthogonal_images():
    """Positives have similarity 1, the 2N - 2 negatives 0: loss = -log(e^{1/τ} / (e^{1/τ} + 2N - 2))."""
    n, tau = 4, 0.5
    z = torch.eye(n, 8, dtype=torch.float64)
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * n - 2))
    assert nt_xent_loss(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_collapsed_projections_cost_log_of_the_number_of_candidates(tau):
    """Every view identical: all 2N - 1 candidates tie with the positive, so the loss is log(2N - 1), any τ."""
    n = 5
    z = torch.ones(n, 3, dtype=torch.float64)
    assert nt_xent_loss(z, 2 * z, tau).item() == pytest.approx(math.log(2 * n - 1), rel=1e-12)


def test_is_invariant_to_the_scale_of_the_projections():
    z1, z2 = random_views(6, 5, seed=0)
    torch.testing.assert_close(nt_xent_loss(z1, z2), nt_xent_loss(3.7 * z1, 0.2 * z2))


def test_extra_negatives_are_extra_candidates_in_value_and_gradient():
    z1, z2 = random_views(4, 6, seed=1)
    g = torch.Generator().manual_seed(1)
    memory = F.normalize(torch.randn(7, 6, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    ours = nt_xent_loss(z1, z2, 0.2, extra_negatives=memory)
    reference = naive_nt_xent(z1, z2, 0.2, memory.detach())
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(reference, (z1, z2)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    assert ours > nt_xent_loss(z1, z2, 0.2)  # more negatives can only raise the loss


def test_extra_negatives_get_no_gradient_and_may_change_before_backward():
    """The memory is a constant; a queue enqueued in place between forward and backward must not matter."""
    z1, z2 = random_views(3, 4, seed=2)
    memory = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1).requires_grad_()
    reference = torch.autograd.grad(nt_xent_loss(z1, z2, 0.5, extra_negatives=memory.detach().clone()), (z1,))[0]
    loss = nt_xent_loss(z1, z2, 0.5, extra_negatives=memory)
    with torch.no_grad():
        memory.add_(1.0)
    loss.backward()
    assert memory.grad is None
    torch.testing.assert_close(z1.grad, reference)


def test_an_empty_memory_changes_nothing():
    z1, z2 = random_views(3, 4, seed=3)
    empty = torch.zeros(0, 4, dtype=torch.float64)
    assert nt_xent_loss(z1, z2, 0.5, extra_negatives=empty) == nt_xent_loss(z1, z2, 0.5)


def test_bf16_autocast_still_computes_the_loss_in_float32():
    """Against the fp32 loss of the same bf16-rounded inputs: any bf16 arithmetic inside would show at 1e-2."""
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 16, generator=g).bfloat16(), torch.randn(8, 16, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nt_xent_loss(z1, z2, 0.1)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, nt_xent_loss(z1.float(), z2.float(), 0.1), rtol=1e-6, atol=1e-6)


def test_fp32_inputs_under_autocast_give_the_same_loss_as_without():
    z1, z2 = random_views(8, 16, seed=4, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent_loss(z1, z2, 0.1)
    torch.testing.assert_close(inside, nt_xent_loss(z1, z2, 0.1), rtol=1e-6, atol=1e-6)


def fake_gather(rank, others):
    """A gather as process ``rank`` sees it, in one process: the other processes' blocks (already normalised, as
    the real gather delivers them) placed around this process's rows; one block list per call (view 1, view 2)."""
    calls = iter(others)

    def gather(x):
        blocks = [F.normalize(block, dim=1) for block in next(calls)]
        return torch.cat([*blocks[:rank], x, *blocks[rank:]]), rank * x.shape[0]

    return gather


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_fake_gather_equals_the_whole_batch_loss_restricted_to_this_process_anchors(rank):
    """Three 'processes' with different data: process ``rank``'s loss and the gradients of its own z equal the
    naive loop over the concatenated batch, averaged over this process's 2N anchors only (the other processes'
    rows held fixed). Rank 1 has rows on both sides, so offsets of positives and self-similarities must be right."""
    world, n, d, tau = 3, 3, 4, 0.5
    views = [random_views(n, d, seed=10 + r) for r in range(world)]
    z1, z2 = views[rank]
    others1 = [v[0].detach() for r, v in enumerate(views) if r != rank]
    others2 = [v[1].detach() for r, v in enumerate(views) if r != rank]
    ours = nt_xent_loss(z1, z2, tau, gather=fake_gather(rank, [others1, others2]))

    all1 = torch.cat([z1 if r == rank else v[0].detach() for r, v in enumerate(views)])
    all2 = torch.cat([z2 if r == rank else v[1].detach() for r, v in enumerate(views)])
    per_anchor = naive_anchor_losses(all1, all2, tau)
    mine = [rank * n + i for i in range(n)] + [world * n + rank * n + i for i in range(n)]
    reference = sum(per_anchor[i] for i in mine) / (2 * n)

    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(reference, (z1, z2)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_fake_two_process_gather_sums_to_the_single_process_loss_on_the_whole_batch():
    """Both 'processes' in one autograd graph, with different data: the mean of their losses and its gradients
    w.r.t. every row (own rows and the rows reached through the other's gather) equal the single-process loss on
    the concatenated batch. This is what gradients flowing back to their owners must add up to."""
    a1, a2 = random_views(4, 5, seed=20)
    b1, b2 = random_views(4, 5, seed=21)
    rows = (a1, a2, b1, b2)
    loss0 = nt_xent_loss(a1, a2, 0.5, gather=fake_gather(0, [[b1], [b2]]))
    loss1 = nt_xent_loss(b1, b2, 0.5, gather=fake_gather(1, [[a1], [a2]]))
    distributed = (loss0 + loss1) / 2
    single = nt_xent_loss(torch.cat([a1, b1]), torch.cat([a2, b2]), 0.5)
    torch.testing.assert_close(distributed, single, rtol=1e-10, atol=1e-12)
    for ours, reference in zip(torch.autograd.grad(distributed, rows), torch.autograd.grad(single, rows),
                               strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-12)
    assert loss0.item() != pytest.approx(loss1.item())  # the processes really hold different data


def test_a_one_process_gather_equals_no_gather():
    z1, z2 = random_views(5, 3, seed=5)
    torch.testing.assert_close(nt_xent_loss(z1, z2, 0.3, gather=lambda x: (x, 0)), nt_xent_loss(z1, z2, 0.3))


@pytest.mark.parametrize("rank", [0, 1])
def test_one_image_per_process_with_a_gather_is_the_two_image_loss_at_this_process_anchors(rank):
    """One image on this process is no contrastive batch alone (see the "at least 2" error), but the gathered
    batch has two: the loss and its gradients are the naive loop's over both images, at this image's two views."""
    mine, other = random_views(1, 4, seed=6), random_views(1, 4, seed=7)
    z1, z2 = mine
    loss = nt_xent_loss(z1, z2, 0.5, gather=fake_gather(rank, [[other[0].detach()], [other[1].detach()]]))

    pair = [mine, (other[0].detach(), other[1].detach())]
    if rank == 1:
        pair.reverse()
    per_anchor = naive_anchor_losses(torch.cat([pair[0][0], pair[1][0]]), torch.cat([pair[0][1], pair[1][1]]), 0.5)
    reference = (per_anchor[rank] + per_anchor[2 + rank]) / 2
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(loss, (z1, z2)), torch.autograd.grad(reference, (z1, z2)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_shape_temperature_and_gather_errors():
    with pytest.raises(SimCLRv2Error, match="same shape"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(SimCLRv2Error, match="same shape"):
        nt_xent_loss(torch.randn(4), torch.randn(4))
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(SimCLRv2Error, match="temperature"):
            nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=bad)
    with pytest.raises(SimCLRv2Error, match="at least 2"):
        nt_xent_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(SimCLRv2Error, match="at least 2"):
        nt_xent_loss(torch.randn(1, 3), torch.randn(1, 3), extra_negatives=torch.zeros(0, 3))
    with pytest.raises(SimCLRv2Error, match="extra_negatives"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), extra_negatives=torch.randn(6, 5))
    with pytest.raises(SimCLRv2Error, match="gather returned"):
        nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), gather=lambda x: (torch.cat([x, x]), 7))


def test_distillation_loss_against_a_hand_computation():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0]])
    # τ = 1: P_T = softmax(0, 1) = (1/(1+e), e/(1+e)); log P_S = (log(e/(1+e)), log(1/(1+e)))
    e = math.e
    p_t = (1 / (1 + e), e / (1 + e))
    log_p_s = (math.log(e / (1 + e)), math.log(1 / (1 + e)))
    expected = -(p_t[0] * log_p_s[0] + p_t[1] * log_p_s[1])
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # τ = 0.5 doubles the logits: P_T = (1/(1+e²), e²/(1+e²)), log P_S = (log(e²/(1+e²)), log(1/(1+e²)))
    e2 = math.e**2
    expected_half = -(math.log(e2 / (1 + e2)) + e2 * math.log(1 / (1 + e2))) / (1 + e2)
    assert distillation_loss(student, teacher, 0.5).item() == pytest.approx(expected_half, rel=1e-6)


def test_distillation_loss_matches_a_naive_loop_and_ignores_the_teachers_gradient():
    g = torch.Generator().manual_seed(4)
    student = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    tau = 0.1
    loss = distillation_loss(student, teacher, tau)
    expected = 0.0
    for b in range(5):
        p_t = [math.exp(t / tau) for t in teacher[b].tolist()]
        p_s = [math.exp(s / tau) for s in student[b].tolist()]
        expected -= sum(pt / sum(p_t) * math.log(ps / sum(p_s)) for pt, ps in zip(p_t, p_s, strict=True)) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    # ∂loss/∂s = (P_S − P_T) / (τ·B)
    expected_grad = (F.softmax(student / tau, 1) - F.softmax(teacher / tau, 1)).detach() / (tau * 5)
    torch.testing.assert_close(student.grad, expected_grad)


def test_temperature_sets_the_entropy_of_the_target():
    """A student equal to its teacher pays the teacher's entropy at τ, which falls as τ sharpens the teacher;
    a uniform student pays log(C) whatever the teacher and τ."""
    teacher = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)

    def entropy(tau):
        p = F.softmax(teacher / tau, 1)
        return -(p * p.log()).sum().item()

    losses = {tau: distillation_loss(teacher.clone(), teacher, tau).item() for tau in (0.1, 1.0, 10.0)}
    for tau, value in losses.items():
        assert value == pytest.approx(entropy(tau), rel=1e-10)
    assert losses[0.1] < losses[1.0] < losses[10.0] < math.log(4)
    for tau in (0.1, 1.0):
        assert distillation_loss(torch.zeros(1, 4), teacher.float(), tau).item() == pytest.approx(math.log(4))


def test_distillation_under_bf16_autocast_is_float32():
    g = torch.Generator().manual_seed(6)
    student, teacher = torch.randn(4, 5, generator=g).bfloat16(), torch.randn(4, 5, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = distillation_loss(student, teacher, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, distillation_loss(student.float(), teacher.float(), 0.1))


def test_distillation_errors():
    with pytest.raises(SimCLRv2Error, match="same classes"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 4), 1.0)
    with pytest.raises(SimCLRv2Error, match="temperature"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 3), 0.0)


def test_distillation_objective_weighs_the_labelled_term_by_one_minus_alpha():
    g = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0])
    mixed = distillation_objective(student, teacher, 1.0, labels, alpha=0.25)
    expected = 0.75 * F.cross_entropy(student, labels) + 0.25 * distillation_loss(student, teacher, 1.0)
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(distillation_objective(student, teacher, 2.0, labels, alpha=0.0),
                               F.cross_entropy(student, labels))
    assert distillation_objective(student, teacher, 1.0) == distillation_loss(student, teacher, 1.0)
    with pytest.raises(SimCLRv2Error, match="labels"):
        distillation_objective(student, teacher, 1.0, None, alpha=0.5)
    with pytest.raises(SimCLRv2Error, match="alpha"):
        distillation_objective(student, teacher, 1.0, labels, alpha=1.5)
    with pytest.raises(SimCLRv2Error, match="labels"):
        distillation_objective(student, teacher, 1.0, labels[:2], alpha=0.5)


def test_distillation_objective_averages_the_labelled_term_over_labelled_rows_only():
    torch.manual_seed(3)
    student, teacher = torch.randn(6, 4), torch.randn(6, 4)
    labels = torch.tensor([2, -1, 0, -1, -1, 3])  # -1: an unlabeled image in the same batch
    known = labels >= 0
    expected = 0.5 * F.cross_entropy(student[known], labels[known]) + 0.5 * distillation_loss(student, teacher, 0.1)
    torch.testing.assert_close(distillation_objective(student, teacher, 0.1, labels, alpha=0.5), expected)
    unlabeled = torch.full((6,), -1)
    torch.testing.assert_close(distillation_objective(student, teacher, 0.1, unlabeled, alpha=0.5),
                               0.5 * distillation_loss(student, teacher, 0.1))
