"""The sparse-row optimizers against torch's Adagrad and SparseAdam on the same gradients."""
import copy

import pytest
import torch
from torch import nn

from mba_dist.tables.row_optim import RowAdagrad, RowAdam


def _run(make_opt, steps=6, seed=0):
    """Two tables looked up with repeated ids (and once twice in a step), `steps` updates."""
    torch.manual_seed(seed)
    emb = nn.ModuleList([nn.Embedding(50, 8, sparse=True), nn.Embedding(30, 8, sparse=True)])
    g = torch.Generator().manual_seed(seed + 1)
    opt = make_opt(list(emb.parameters()))
    for _ in range(steps):
        ids = [torch.randint(0, 12, (40,), generator=g), torch.randint(0, 30, (25,), generator=g)]
        target = torch.randn(40, 8, generator=g)
        # table 0 is read twice (two autograd contributions); table 1 once
        loss = ((emb[0](ids[0]) - target) ** 2).sum() + emb[0](ids[0][:7]).sum() \
            + (emb[1](ids[1]) ** 3).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [e.weight.detach().clone() for e in emb], opt


@pytest.mark.parametrize("distinct", [True, False])  # the CPU form, and the GPU form
@pytest.mark.parametrize("ours,theirs", [
    (lambda p, d: RowAdagrad(p, lr=0.05, distinct=d), lambda p: torch.optim.Adagrad(p, lr=0.05)),
    (lambda p, d: RowAdam(p, lr=0.01, distinct=d), lambda p: torch.optim.SparseAdam(p, lr=0.01)),
])
def test_matches_torch_optimizer(ours, theirs, distinct):
    """Each distinct row updated once, or every lookup's row with the same values (GPU)."""
    got, opt = _run(lambda p: ours(p, distinct))
    want, ref = _run(theirs)
    start, _ = _run(lambda p: ours(p, distinct), steps=0)
    for a, b, w0 in zip(got, want, start):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, w0)  # it did move
        untouched = torch.arange(len(a)) >= 30  # table 0: ids < 12 only
        if len(a) == 50:
            assert torch.equal(a[untouched], w0[untouched])
    # the same state keys as torch's, and the same values
    for p_ours, p_ref in zip(opt.state, ref.state):
        s, r = opt.state[p_ours], ref.state[p_ref]
        assert s.keys() == r.keys()
        for k in s:
            if isinstance(s[k], torch.Tensor) and s[k].dim() > 0:
                torch.testing.assert_close(s[k], r[k].to_dense() if r[k].is_sparse else r[k],
                                           rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [lambda p: RowAdagrad(p, lr=0.05), lambda p: RowAdam(p, lr=0.01)])
def test_state_dict_resumes_the_same_trajectory(make):
    """Loading the state into a fresh optimizer continues exactly as the original would."""
    torch.manual_seed(0)
    a = nn.Embedding(20, 4, sparse=True)
    b = nn.Embedding(20, 4, sparse=True)
    b.load_state_dict(a.state_dict())
    oa = make(list(a.parameters()))
    ids = [torch.randint(0, 20, (15,)) for _ in range(6)]

    def step(emb, opt, i):
        opt.zero_grad(set_to_none=True)
        (emb(i) ** 2).sum().backward()
        opt.step()
    for i in ids[:3]:
        step(a, oa, i)
    b.load_state_dict(a.state_dict())
    ob = make(list(b.parameters()))
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # as through a checkpoint file
    for i in ids[3:]:
        step(a, oa, i)
        step(b, ob, i)
    assert torch.equal(a.weight, b.weight)


def test_distinct_rows_are_each_id_once():
    opt = RowAdagrad([nn.Parameter(torch.zeros(10, 2))], lr=0.1)
    p = opt.param_groups[0]["params"][0]
    ids = torch.tensor([3, 7, 3, 3, 0, 7, 9])
    assert sorted(opt._distinct(p, ids).tolist()) == [0, 3, 7, 9]
    assert opt._distinct(p, torch.tensor([5])).tolist() == [5]  # the owner table is reused


def test_dense_gradient_is_refused():
    w = nn.Parameter(torch.zeros(4, 2))
    opt = RowAdagrad([w], lr=0.1)
    w.sum().backward()
    with pytest.raises(ValueError, match="sparse row gradients"):
        opt.step()


def test_torch_backend_picks_the_update_by_config():
    from mba_dist.config import OptimConfig
    from mba_dist.tables.torch_tables import TorchTableGroup

    def opt(mode, impl):
        optim = OptimConfig(mode=mode, lr=0.1, torch_sparse=impl)
        return type(TorchTableGroup(["t"], 5, 4, 2, optim, torch.device("cpu")).opt)
    assert opt("adagrad", "auto") is RowAdagrad and opt("sparse_adam", "auto") is RowAdam
    assert opt("adagrad", "rows") is RowAdagrad and opt("sparse_adam", "rows") is RowAdam
    assert opt("sparse_adam", "coalesce") is torch.optim.SparseAdam
    assert opt("adagrad", "coalesce") is torch.optim.Adagrad
