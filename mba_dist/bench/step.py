"""The authors'-style MBA training step, the baseline `mba-dist bench` and the GPU script run
beside the trainer's own step (`bench.train.bench_worker`), and the shared pieces of the
benchmarks (synthetic pairs, device sync, peak memory).

The authors' step as their code runs it: a map-style `Dataset` whose `__getitem__` returns one
(user, positive, negative) triple, drawing the negative in a Python loop, batched by a
`DataLoader` (shuffle, per-sample collation), seven separate `nn.Embedding` models, L2 over whole
tables and dense Adam over every row of the trained models. Figure: triples/s (one triple =
user, positive, negative). Devices: CPU or one CUDA GPU.
"""
from __future__ import annotations

import random
import time

import numpy as np
import torch
from torch import nn

from mba_dist import config as C
from mba_dist.data.pairs import Pairs, dedup_sorted
from mba_dist.dist.collective import own_peak_rss_mb
from mba_dist.mba.losses import Logits, l2, mba_loss
from mba_dist.mba.roles import DN_MODELS, DP_MODELS, FROZEN, Kind, Model, Phase, phase_of_step
from mba_dist.data.sampler import Observed


def logits(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """MF logit per row: <u_b, i_b>; [B, d] x [B, d] -> [B] (the authors' per-model form)."""
    return (u * i).sum(-1)


def synthetic_pairs(num_users: int, num_items: int, rows: int, seed: int = 0) -> Pairs:
    """`rows` distinct (user, item) pairs, items Zipf-like popular (unique, sorted by key)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users, size=rows, dtype=np.int64)
    items = (num_items * rng.power(0.3, size=rows)).astype(np.int64) % num_items
    return Pairs(*dedup_sorted(users, items, num_items))


def sync(dev: torch.device) -> None:
    """Wait for the device's queued work (timings of CUDA kernels)."""
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return own_peak_rss_mb()


class _AuthorsTriples(torch.utils.data.Dataset):
    """One (user, positive, negative) triple per index, the negative drawn per sample in Python
    until it is not one of the user's items (the authors' data path).

    With `serve`, it holds only that many pairs drawn at random (the ones a timed run of that
    many triples consumes), with the item sets of their users: the per-sample work is the same,
    and the Python lists and sets no longer grow with the dataset (about 200 bytes a pair, which
    ruled the 60M-pair set out)."""

    def __init__(self, num_items: int, pairs: Pairs, serve: int | None = None, seed: int = 0):
        self.num_items = num_items
        pick = slice(None)
        if serve is not None and serve < len(pairs):
            pick = np.random.default_rng(seed).choice(len(pairs), size=serve, replace=False)
        self.users, self.items = pairs.users[pick].tolist(), pairs.items[pick].tolist()
        observed = Observed(pairs.keys(num_items), num_items)
        self.user_items: dict[int, set[int]] = {u: set(observed.row(u).tolist())
                                                for u in set(self.users)}

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, k: int) -> tuple[int, int, int]:
        u = self.users[k]
        seen = self.user_items[u]
        while True:
            j = random.randint(0, self.num_items - 1)
            if j not in seen:
                return u, self.items[k], j


class AuthorsStep:
    """The authors' way: seven MF models, per-sample batches and negatives, dense Adam + full L2."""

    def __init__(self, num_users: int, num_items: int, pairs: Pairs, dim: int, device, cfg: C.Config,
                 serve: int | None = None):
        self.dev, self.cfg = torch.device(device), cfg
        self.num_users, self.num_items = num_users, num_items
        self.emb = {m.value: (nn.Embedding(num_users, dim).to(self.dev),
                              nn.Embedding(num_items, dim).to(self.dev)) for m in Model}
        for m in Model:
            for e in self.emb[m.value]:
                nn.init.normal_(e.weight, std=0.01)
        for m in FROZEN:
            for e in self.emb[m.value]:
                e.weight.requires_grad_(False)
        self.triples = _AuthorsTriples(num_items, pairs, serve)

        def params(models):
            return [p for m in models for e in self.emb[m.value] for p in e.parameters()]
        lr = cfg.optim.lr
        self.opt = {Phase.DN: torch.optim.Adam(params((Model.T, *DN_MODELS)), lr=lr),
                    Phase.DP: torch.optim.Adam(params((Model.T, *DP_MODELS)), lr=lr)}

    def batches(self, batch: int):
        """Endless shuffled batches of (users, positives, negatives) int64 tensors."""
        loader = torch.utils.data.DataLoader(self.triples, batch_size=batch, shuffle=True,
                                             num_workers=0)
        while True:
            yield from loader

    def step(self, step: int, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> None:
        m = self.cfg.mba
        phase = phase_of_step(step)
        hf, hg = (Model.H1_F, Model.H1_G) if phase is Phase.DN else (Model.H2_F, Model.H2_G)
        ut, sides = u.to(self.dev), (pos.to(self.dev), neg.to(self.dev))

        def lg(*models: Model) -> torch.Tensor:  # [B, k, 2]: each model's positive, negative
            return torch.stack([torch.stack([logits(self.emb[k.value][0](ut), self.emb[k.value][1](x))
                                             for x in sides], -1) for k in models], 1)
        lgs = Logits(lg(Model.T), lg(*FROZEN), lg(hf, hg))
        full = [e.weight for k in (Model.T, hf, hg) for e in self.emb[k.value]]
        loss = (mba_loss(Kind.B, phase, lgs, m.alpha, m.c1, m.c2)
                + m.lambda_t * l2(full, self.num_users))
        self.opt[phase].zero_grad()
        loss.backward()
        self.opt[phase].step()


def authors_speed(num_users: int, num_items: int, pairs: Pairs, batch: int, steps: int,
                  warmup: int = 2, device: str = "cpu", dim: int = 32) -> dict:
    dev = torch.device(device)
    _reset_peak(dev)
    a = AuthorsStep(num_users, num_items, pairs, dim, dev, C.load_config(None),
                    serve=batch * (warmup + steps))
    it = a.batches(batch)
    for s in range(warmup + steps):
        if s == warmup:
            sync(dev)
            t0 = time.perf_counter()
        a.step(s, *next(it))
    sync(dev)
    dt = time.perf_counter() - t0
    return {"method": "authors-style step", "batch": batch, "steps": steps,
            "triples_per_s": batch * steps / dt, "step_s": dt, "peak_mb": _peak_mb(dev)}
