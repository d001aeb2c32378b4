"""`mba-dist prepare`: raw behavior logs -> the Parquet dataset of `mba_dist.data.format`.

    mba-dist prepare --out DIR --target purchase \\
        --train purchase=buy_train.csv --train cart=cart.csv.gz --test purchase=buy_test.csv \\
        [--valid purchase=buy_valid.csv | --valid-fraction 0.1] [--seed 0] [--ids auto|int|str]

A behavior may be given several files (`--train click=pv.csv --train click=other.csv` builds
click = the union). `--train click=@purchase` adds the target's *train* pairs (after the
validation carve) to click: a click log known to contain every train purchase (Taobao's
click = pv_test ∪ buy_train) must not contain the purchases held out for validation, or
validation would see them as clicks while the test purchases are not. Raw ids (integers or
strings, decided once over all files by `data_prep.ids`) are mapped to dense ids; the maps are
saved. Duplicate pairs are dropped and counted. A held-out file with the content of a train file
is an error; cold test users/items, held-out pairs that are train pairs and an empty validation
split are warnings (one line each, with counts, kept in meta.json). With no validation file, a validation split is carved
from the target train pairs per user (seeded; every user keeps at least one train pair).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.ids import Column, dense_ids, id_type
from data_prep.readers import RawInputError, read_pairs, row_name
from mba_dist.data.format import FORMAT_VERSION, check_output, write_pairs
from mba_dist.data.pairs import contains, dedup_sorted, unique_ints
from mba_dist.files import atomic_dir

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass
class Source:
    split: str
    behavior: str
    path: Path | None  # None: a reference to the train pairs of behavior `ref`
    ref: str | None = None


@dataclass
class PrepareSpec:
    out: Path
    target: str = "purchase"
    sources: list[Source] = field(default_factory=list)
    valid_fraction: float = 0.1
    seed: int = 0
    header: str = "auto"
    ids: str = "auto"  # the id type of users and items (`data_prep.ids`)
    overwrite: bool = False


def parse_source(split: str, spec: str) -> Source:
    """`"cart=path/to/cart.csv.gz"` -> Source; names the problem on bad input."""
    if "=" not in spec:
        raise RawInputError(f"--{split} {spec!r}: expected BEHAVIOR=FILE, e.g. purchase=buy.csv")
    name, path = spec.split("=", 1)
    if not _NAME_RE.match(name):
        raise RawInputError(f"--{split} {spec!r}: behavior name {name!r} must be letters, digits, "
                            "_ or -, starting with a letter")
    if path.startswith("@"):
        if split != "train":
            raise RawInputError(f"--{split} {spec!r}: @BEHAVIOR references are for --train only")
        return Source(split, name, None, ref=path[1:])
    return Source(split, name, Path(path))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def carve_valid(users: np.ndarray, items: np.ndarray, fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, valid) over target pairs: per user, a `fraction` of the pairs.

    A user with n pairs gives floor(n*f) pairs plus one more with probability frac(n*f), so the
    expected share is f for every user; nobody gives their last pair. Which pairs: each pair
    draws a random key, and a user gives the pairs of smallest key (ties by position).
    """
    rng = np.random.default_rng(seed)
    key = rng.random(len(users))
    # prepare's pairs are sorted by user: one sort of codes then decides (`_smallest_keys`)
    in_order = len(users) == 0 or bool(np.all(users[1:] >= users[:-1]))
    order = None if in_order else _by_user_then_key(users, key)
    u_sorted = users if in_order else users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    want = counts * fraction
    take = np.floor(want).astype(np.int64) + (rng.random(len(counts)) < want % 1)
    take = np.minimum(take, counts - 1)
    valid = _smallest_keys(starts, counts, take, key) if in_order and len(users) else None
    if valid is None:
        order = _by_user_then_key(users, key) if order is None else order
        rank = np.arange(len(users)) - np.repeat(starts, counts)
        valid = np.zeros(len(users), dtype=bool)
        valid[order] = rank < np.repeat(take, counts)
    return ~valid, valid


def _by_user_then_key(users: np.ndarray, key: np.ndarray) -> np.ndarray:
    """np.lexsort((key, users)) exactly (ties break by position), by two stable argsorts."""
    by_key = np.argsort(key, kind="stable")
    return by_key[np.argsort(users[by_key], kind="stable")]


def _smallest_keys(starts: np.ndarray, counts: np.ndarray, take: np.ndarray, key: np.ndarray
                   ) -> np.ndarray | None:
    """For pairs sorted by user (runs at `starts`), which are among their user's `take` smallest
    keys, by one sort of values (3x faster than `_by_user_then_key`): a pair's code is its run's
    index in the top bits over the leading bits of its key, and a pair is carved when its code is
    at most the take-th smallest code of its run. The order of codes is the order of keys except
    among equal codes, so the answer is exact unless the take-th and the next code of some run
    are equal: None then, and the argsorts decide."""
    kbits = 63 - max(1, (len(starts) - 1).bit_length())
    run = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    code = (run << kbits) | (key * 2.0 ** kbits).astype(np.int64)
    ordered = np.sort(code)
    cut = starts + take  # first kept pair of each run (take < count)
    if np.any(ordered[cut[take > 0] - 1] == ordered[cut[take > 0]]):
        return None
    limit = np.where(take > 0, ordered[np.maximum(cut - 1, 0)], -1)
    return code <= np.repeat(limit, counts)


def prepare(spec: PrepareSpec, log=print,
            progress: Callable[[str, int], None] | None = None) -> dict:
    """Write the dataset of `spec` (module docstring); `log` gets one line per file and per
    warning, `progress(file, rows)` the rows parsed so far of a text file."""
    check_output(spec.out, spec.overwrite)  # before reading any log
    if not 0.0 <= spec.valid_fraction < 1.0:
        raise RawInputError(f"--valid-fraction must be in [0, 1), got {spec.valid_fraction}")
    by_split: dict[str, dict[str, list[Source]]] = {}
    for s in spec.sources:
        by_split.setdefault(s.split, {}).setdefault(s.behavior, []).append(s)
    train = by_split.get("train", {})
    if spec.target not in train:
        raise RawInputError(f"--target {spec.target!r} has no --train file "
                            f"(train behaviors: {sorted(train) or 'none'})")
    for split in ("valid", "test"):
        for b in by_split.get(split, {}):
            if b != spec.target:
                raise RawInputError(f"--{split} {b}=...: only the target behavior "
                                    f"{spec.target!r} has {split} files")
    if "test" not in by_split:
        raise RawInputError(f"no --test {spec.target}=FILE given")

    refs = [s for s in spec.sources if s.ref is not None]
    for s in refs:
        if s.ref != spec.target or s.behavior == spec.target:
            raise RawInputError(f"--train {s.behavior}=@{s.ref}: only the target's train pairs "
                                f"(@{spec.target}) can be added to another behavior")
    raw: list[tuple[Source, np.ndarray, np.ndarray]] = []
    sources_meta = []
    for s in spec.sources:
        if s.ref is not None:
            sources_meta.append({"split": s.split, "behavior": s.behavior,
                                 "reference": f"train pairs of {s.ref} after the validation carve"})
            continue
        t0 = time.perf_counter()
        u, i = read_pairs(s.path, spec.header,
                          None if progress is None else partial(progress, str(s.path)),
                          ints=spec.ids != "str")
        dt = time.perf_counter() - t0
        log(f"read {s.split}/{s.behavior}: {s.path}: {len(u):,} rows in {dt:.1f} s "
            f"({len(u) / max(dt, 1e-9) / 1e6:.2f}M rows/s)")
        raw.append((s, u, i))
        sources_meta.append({"split": s.split, "behavior": s.behavior, "path": str(s.path),
                             "sha256": sha256(s.path), "rows": int(len(u))})
    _same_files(sources_meta, spec.target)
    id_types, vals, dense = {}, {}, []
    for k, entity in enumerate(("user", "item")):
        cols = [Column(s.path, x[k], partial(row_name, s.path, spec.header)) for s, *x in raw]
        id_types[entity] = id_type(entity, cols, spec.ids)
        vals[entity], ids = dense_ids(cols, id_types[entity])
        dense.append(ids)
    user_vals, item_vals = vals["user"], vals["item"]
    n_users, n_items = len(user_vals), len(item_vals)

    # Union per (split, behavior), dense ids, duplicates dropped.
    merged: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    dup_counts: dict[str, int] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for n, (s, _, _) in enumerate(raw):
        groups.setdefault((s.split, s.behavior), []).append(n)
    for (split, b), members in groups.items():
        u = np.concatenate([dense[0][n] for n in members])
        i = np.concatenate([dense[1][n] for n in members])
        du, di = dedup_sorted(u, i, n_items)
        dup_counts[f"{split}/{b}"] = int(len(u) - len(du))
        merged[(split, b)] = (du, di)

    valid_protocol: dict = {"source": "file"}
    if ("valid", spec.target) not in merged:
        tu, ti = merged[("train", spec.target)]
        keep, val = carve_valid(tu, ti, spec.valid_fraction, spec.seed)
        merged[("train", spec.target)] = (tu[keep], ti[keep])
        merged[("valid", spec.target)] = (tu[val], ti[val])
        valid_protocol = {"source": "carved from target train pairs, per user",
                          "fraction": spec.valid_fraction, "seed": spec.seed}
    for s in refs:  # @target references resolve to the target's final train pairs
        tu, ti = merged[("train", spec.target)]
        ou, oi = merged.get(("train", s.behavior), (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        merged[("train", s.behavior)] = dedup_sorted(np.r_[ou, tu], np.r_[oi, ti], n_items)

    warnings = data_warnings(merged, spec.target, n_items)
    for w in warnings:
        log(f"warning: {w}")
    splits_meta: dict[str, dict] = {}
    with atomic_dir(spec.out, overwrite=spec.overwrite, check=check_output) as tmp:
        for (split, b), (u, i) in sorted(merged.items()):
            write_pairs(tmp / split / f"{b}.parquet", u, i)
            splits_meta.setdefault(split, {})[b] = {
                "rows": int(len(u)), "users": int(len(unique_ints(u))),
                "items": int(len(unique_ints(i))), "duplicates_dropped": dup_counts.get(f"{split}/{b}", 0)}
        for entity, vals in (("user", user_vals), ("item", item_vals)):
            pq.write_table(pa.table({"raw": vals, "id": np.arange(len(vals), dtype=np.int64)}),
                           tmp / f"{entity}_map.parquet")
        meta = {
            "format_version": FORMAT_VERSION,
            "num_users": n_users, "num_items": n_items, "target": spec.target,
            "splits": splits_meta, "valid_protocol": valid_protocol,
            "id_types": id_types, "warnings": warnings,
            "sources": sources_meta, "created_by": "mba-dist prepare",
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    log(f"wrote {spec.out}: {n_users} users, {n_items} items, "
        + ", ".join(f"{s}/{b} {m['rows']}" for s, bs in splits_meta.items() for b, m in bs.items()))
    return meta


def _same_files(sources: list[dict], target: str) -> None:
    """A valid or test file that is one of the train files (same bytes) is an error: the model
    would be selected or scored on pairs it trained on."""
    train = {m["sha256"]: m for m in sources if m["split"] == "train" and "sha256" in m}
    for m in sources:
        t = train.get(m.get("sha256")) if m["split"] != "train" else None
        if t is not None:
            raise RawInputError(f"--{m['split']} {m['behavior']}={m['path']} has the same content "
                                f"as --train {t['behavior']}={t['path']}: held-out pairs must not "
                                "be train pairs")


def data_warnings(merged: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], target: str,
                  n_items: int) -> list[str]:
    """One line per thing a user should know about the held-out pairs (each with counts): cold
    test users and items (no train pair of any behavior: nothing to learn them from), held-out
    target pairs that are also train target pairs, an empty validation split."""
    out = []
    train = [merged[k] for k in merged if k[0] == "train"]
    train_users = unique_ints(np.concatenate([u for u, _ in train]))
    train_items = unique_ints(np.concatenate([i for _, i in train]))
    tu, ti = merged[("train", target)]
    train_keys = tu * n_items + ti  # sorted (dedup_sorted)
    for split in ("valid", "test"):
        u, i = merged.get((split, target), (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        if len(u) == 0:
            if split == "valid":
                out.append(f"valid/{target} is empty: runs cannot select a model on it "
                           "(train.select_on=valid needs --valid or --valid-fraction > 0)")
            continue
        users, items = unique_ints(u), unique_ints(i)
        cold_u = int((~contains(train_users, users)).sum())
        cold_i = int((~contains(train_items, items)).sum())
        if split == "test" and (cold_u or cold_i):
            out.append(f"test/{target}: {cold_u} of {len(users)} users and {cold_i} of "
                       f"{len(items)} items have no train pair of any behavior (cold: nothing "
                       "to learn their factors from)")
        both = int(contains(train_keys, u * n_items + i).sum())
        if both:
            out.append(f"{split}/{target}: {both} of {len(u)} pairs are also train/{target} "
                       "pairs (known train items are not ranked: these are never hits)")
    return out
