"""`Rows`: the packed layout and its hand-written logit gradient."""
import pytest
import torch

from mba_dist.tables.base import Rows, logit_grad_broadcast, logit_grad_per_model


def test_packed_logits_and_gradient_match_autograd_of_the_formula():
    torch.manual_seed(0)
    b, k, d = 7, 3, 5
    packed = torch.randn(b, 3 * k, d, dtype=torch.float64, requires_grad=True)
    ref = packed.detach().clone().requires_grad_(True)
    w = torch.randn(b, k, 2, dtype=torch.float64)

    got = Rows(packed).logits()
    users, items = ref[:, :k], ref[:, k:].reshape(b, k, 2, d)
    want = torch.stack([(users * items[:, :, s]).sum(-1) for s in (0, 1)], -1)
    torch.testing.assert_close(got, want)
    # model j: user at j, positive at k + 2j, negative at k + 2j + 1
    torch.testing.assert_close(got[:, 1, 1], (ref[:, 1] * ref[:, k + 3]).sum(-1))

    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(packed.grad, ref.grad)
    assert torch.autograd.gradcheck(lambda x: Rows(x).logits(), (packed.detach().requires_grad_(),))


@pytest.mark.parametrize("fill", [logit_grad_broadcast, logit_grad_per_model])
def test_both_gradient_forms_give_the_autograd_gradient(fill):
    """The CPU form (per model) and the GPU form (one broadcast) of the logit backward."""
    torch.manual_seed(1)
    for b, k, d in [(5, 1, 4), (6, 2, 32), (3, 3, 7)]:
        packed = torch.randn(b, 3 * k, d, dtype=torch.float64, requires_grad=True)
        g = torch.randn(b, k, 2, dtype=torch.float64)
        users, items = packed[:, :k], packed[:, k:].reshape(b, k, 2, d)
        logits = torch.stack([(users * items[:, :, s]).sum(-1) for s in (0, 1)], -1)
        (want,) = torch.autograd.grad(logits, packed, g)
        got = Rows(torch.full_like(packed, float("nan")))  # every entry must be written
        fill(Rows(packed.detach()), g, got)
        torch.testing.assert_close(got.packed, want)


def test_views_share_the_packed_storage():
    packed = torch.arange(2 * 6 * 4, dtype=torch.float32).view(2, 6, 4)
    r = Rows(packed)
    assert r.users.shape == (2, 2, 4) and r.items.shape == (2, 2, 2, 4)
    assert r.users.data_ptr() == packed.data_ptr()
    torch.testing.assert_close(r.items[1, 1, 0], packed[1, 2 + 2])
