"""`mba-dist prepare`: formats, id mapping, validation carving, and malformed inputs."""
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.prepare import PrepareSpec, carve_valid, parse_source, prepare
from data_prep.readers import RawInputError, read_pairs
from launch.cli import main
from mba_dist.data.dataset import Dataset


def write(path, text, gz=False):
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def spec(tmp_path, files):
    sources = [parse_source(split, f"{b}={p}") for (split, b), p in files.items()]
    return PrepareSpec(out=tmp_path / "ds", sources=sources, valid_fraction=0.0)


def test_formats_all_read_the_same_pairs(tmp_path):
    want = (["1", "1", "2"], ["10", "11", "10"])
    files = [
        write(tmp_path / "a.tsv", "uid\tsid\n1\t10\n1\t11\n2\t10\n"),
        write(tmp_path / "b.csv", "user,item\n1,10\n1,11\n2,10\n"),
        write(tmp_path / "c.txt", "1 10\n1 11\n\n2 10\n"),
        write(tmp_path / "d.tsv.gz", "1\t10\n1\t11\n2\t10\n", gz=True),
        write(tmp_path / "e.csv", "1,10,extra\n1,11,x\n2,10,y\n"),
    ]
    pq.write_table(pa.table({"user": [1, 1, 2], "item": [10, 11, 10]}), tmp_path / "f.parquet")
    files.append(tmp_path / "f.parquet")
    for f in files:
        u, i = read_pairs(f)  # text as read; Parquet in its column's type (int64 here)
        assert (list(map(str, u)), list(map(str, i))) == want, f
    assert read_pairs(tmp_path / "f.parquet")[0].dtype == "int64"


def test_string_ids_dense_maps_duplicates_and_raw_ids_roundtrip(tmp_path):
    tr = write(tmp_path / "buy.tsv", "u\ti\nalice\tx\nalice\tx\nbob\ty\ncarol\tz\n")
    cart = write(tmp_path / "cart.tsv", "alice\ty\nbob\tz\nbob\ty\n")
    te = write(tmp_path / "test.tsv", "alice\tz\ndave\tx\n")
    meta = prepare(spec(tmp_path, {("train", "purchase"): tr, ("train", "cart"): cart,
                                     ("test", "purchase"): te}), log=lambda m: None)
    assert meta["num_users"] == 4 and meta["num_items"] == 3
    assert meta["splits"]["train"]["purchase"]["duplicates_dropped"] == 1
    assert meta["splits"]["train"]["purchase"]["rows"] == 3
    ds = Dataset(tmp_path / "ds")
    p = ds.pairs("train", "purchase")
    assert list(ds.raw_ids("user", p.users)) == ["alice", "bob", "carol"]
    assert list(ds.raw_ids("item", p.items)) == ["x", "y", "z"]
    assert list(ds.dense_ids("user", ["dave", "alice"])) == [3, 0]
    with pytest.raises(ValueError, match="unknown user id.*zed"):
        ds.dense_ids("user", ["zed"])
    assert len(meta["sources"][0]["sha256"]) == 64


def test_integer_ids_keep_numeric_order(tmp_path):
    tr = write(tmp_path / "buy.txt", "10 2\n2 10\n")
    te = write(tmp_path / "test.txt", "1 2\n")
    prepare(spec(tmp_path, {("train", "purchase"): tr, ("test", "purchase"): te}), log=lambda m: None)
    ds = Dataset(tmp_path / "ds")
    assert list(ds.raw_ids("user", np.arange(3))) == [1, 2, 10]  # numeric, not "1","10","2"


def test_valid_carved_per_user_seeded_and_keeps_a_train_pair():
    users = np.repeat(np.arange(200), np.arange(200) % 7 + 1)
    items = np.arange(len(users))
    a_tr, a_va = carve_valid(users, items, 0.3, seed=5)
    b_tr, b_va = carve_valid(users, items, 0.3, seed=5)
    assert (a_va == b_va).all()
    assert abs(a_va.mean() - 0.3) < 0.05
    assert set(users[a_tr]) == set(users)  # nobody loses all train pairs


def test_carve_of_sorted_pairs_is_the_lexsort_carve(monkeypatch):
    """prepare's pairs are sorted by user: the carve picks, by one sort of codes, exactly the
    pairs the lexsort by (user, key) picks; shuffled input and the tie fallback agree too."""
    import data_prep.prepare as P

    rng = np.random.default_rng(3)
    users = np.sort(rng.integers(0, 3000, 40_000))
    items = np.arange(len(users))

    def lexsort_carve(u, fraction, seed):
        g = np.random.default_rng(seed)
        key = g.random(len(u))
        order = np.lexsort((key, u))
        starts = np.r_[0, np.flatnonzero(np.diff(u[order])) + 1]
        counts = np.diff(np.r_[starts, len(u)])
        take = np.minimum(np.floor(counts * fraction).astype(np.int64)
                          + (g.random(len(counts)) < (counts * fraction) % 1), counts - 1)
        valid = np.zeros(len(u), bool)
        valid[order] = (np.arange(len(u)) - np.repeat(starts, counts)) < np.repeat(take, counts)
        return valid

    for fraction, seed in ((0.1, 0), (0.5, 1), (0.9, 2)):
        want = lexsort_carve(users, fraction, seed)
        assert (carve_valid(users, items, fraction, seed)[1] == want).all()
        shuffled = rng.permutation(len(users))
        assert (carve_valid(users[shuffled], items, fraction, seed)[1]
                == lexsort_carve(users[shuffled], fraction, seed)).all()
    # A run whose cut falls between two equal codes is left to the argsorts.
    key = np.array([0.5, 0.5, 0.1])
    assert P._smallest_keys(np.array([0]), np.array([3]), np.array([2]), key) is None
    monkeypatch.setattr(P, "_smallest_keys", lambda *a: None)
    assert (carve_valid(users, items, 0.1, 0)[1] == lexsort_carve(users, 0.1, 0)).all()


def test_valid_file_used_when_given(tmp_path):
    tr = write(tmp_path / "tr.txt", "1 1\n1 2\n2 1\n")
    va = write(tmp_path / "va.txt", "1 3\n")
    te = write(tmp_path / "te.txt", "2 3\n")
    meta = prepare(spec(tmp_path, {("train", "purchase"): tr, ("valid", "purchase"): va,
                                     ("test", "purchase"): te}), log=lambda m: None)
    assert meta["valid_protocol"]["source"] == "file"
    assert meta["splits"]["valid"]["purchase"]["rows"] == 1


# ---- malformed inputs: each must fail with the file, the line and the problem ----------------
BAD_TEXT = [
    ("one_col.tsv", "uid\tsid\n1\t2\n3\n", r"one_col\.tsv: line 3: expected at least 2 columns"),
    ("empty.tsv", "", r"empty\.tsv: no rows"),
    ("header_only.csv", "user,item\n", r"header_only\.csv: no rows"),
    ("empty_field.csv", "1,2\n,5\n", r"empty_field\.csv: line 2: empty user id"),
    ("empty_item.csv", "1,2\n4,\n", r"empty_item\.csv: line 2: empty item id"),
]


@pytest.mark.parametrize("name,text,msg", BAD_TEXT)
def test_malformed_text(tmp_path, name, text, msg):
    with pytest.raises(RawInputError, match=msg):
        read_pairs(write(tmp_path / name, text))


def test_binary_file(tmp_path):
    p = tmp_path / "bin.tsv"
    p.write_bytes(b"1\t2\n\xff\xfe\x00\x81\n")
    with pytest.raises(RawInputError, match=r"bin\.tsv: line 2: not UTF-8"):
        read_pairs(p)


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "bad.tsv.gz"
    text = "".join(f"{u}\t{u * 7919 % 1000}\n" for u in range(5000)).encode()
    p.write_bytes(gzip.compress(text)[:200])  # cut in the middle of the deflate stream
    with pytest.raises(RawInputError, match=r"bad\.tsv\.gz: cannot read"):
        read_pairs(p)


def test_missing_file(tmp_path):
    with pytest.raises(RawInputError, match=r"nope\.csv: file does not exist"):
        read_pairs(tmp_path / "nope.csv")


def test_parquet_wrong_columns_and_nulls(tmp_path):
    pq.write_table(pa.table({"a": [1], "b": [2], "c": [3]}), tmp_path / "x.parquet")
    with pytest.raises(RawInputError, match=r"x\.parquet: Parquet needs columns"):
        read_pairs(tmp_path / "x.parquet")
    pq.write_table(pa.table({"user": [1, None], "item": [2, 3]}), tmp_path / "n.parquet")
    with pytest.raises(RawInputError, match=r"n\.parquet: row 2: empty user id"):
        read_pairs(tmp_path / "n.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(RawInputError, match=r"junk\.parquet: not a readable Parquet"):
        read_pairs(tmp_path / "junk.parquet")


def test_bad_specs(tmp_path):
    tr = write(tmp_path / "tr.txt", "1 1\n")
    te = write(tmp_path / "te.txt", "1 2\n")
    with pytest.raises(RawInputError, match="expected BEHAVIOR=FILE"):
        parse_source("train", str(tr))
    with pytest.raises(RawInputError, match="behavior name"):
        parse_source("train", f"1bad={tr}")
    with pytest.raises(RawInputError, match="--target 'purchase' has no --train file"):
        prepare(spec(tmp_path, {("train", "cart"): tr, ("test", "purchase"): te}))
    with pytest.raises(RawInputError, match="no --test purchase=FILE"):
        prepare(spec(tmp_path, {("train", "purchase"): tr}))
    with pytest.raises(RawInputError, match="only the target behavior"):
        prepare(spec(tmp_path, {("train", "purchase"): tr, ("test", "cart"): te}))
    s = spec(tmp_path, {("train", "purchase"): tr, ("test", "purchase"): te})
    s.valid_fraction = 1.5
    with pytest.raises(RawInputError, match="--valid-fraction"):
        prepare(s)


def test_failed_prepare_leaves_nothing_and_keeps_existing_output(tmp_path, capsys):
    tr = write(tmp_path / "tr.txt", "1 1\n2 2\n")
    te = write(tmp_path / "te.txt", "1 2\n")
    bad = write(tmp_path / "bad.txt", "1 2\n3\n")
    out = tmp_path / "ds"
    args = ["prepare", "--out", str(out), "--train", f"purchase={tr}", "--test", f"purchase={te}"]
    assert main(args) == 0
    before = (out / "meta.json").read_text()
    # An existing dataset is not replaced without --overwrite...
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    # ...and a failing --overwrite leaves the old one intact and no temporary directory behind.
    assert main(["prepare", "--out", str(out), "--overwrite", "--train", f"purchase={tr}",
                 "--train", f"cart={bad}", "--test", f"purchase={te}"]) == 2
    err = capsys.readouterr().err
    assert "bad.txt: line 2" in err
    assert (out / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "ds", "te.txt", "tr.txt"]
    assert json.loads(before)["num_users"] == 2


def test_target_reference_adds_train_pairs_after_the_carve(tmp_path):
    rows = "".join(f"{u} {i}\n" for u in range(30) for i in range(u % 5 + 4))
    tr = write(tmp_path / "tr.txt", rows)
    pv = write(tmp_path / "pv.txt", "0 100\n1 101\n")
    te = write(tmp_path / "te.txt", "0 99\n")
    s = PrepareSpec(out=tmp_path / "ds", sources=[
        parse_source("train", f"purchase={tr}"), parse_source("train", f"click={pv}"),
        parse_source("train", "click=@purchase"), parse_source("test", f"purchase={te}")],
        valid_fraction=0.3)
    prepare(s, log=lambda m: None)
    ds = Dataset(tmp_path / "ds")
    n = ds.num_items
    keys = {name: set((p.users * n + p.items).tolist()) for name, p in (
        ("train", ds.pairs("train", "purchase")), ("valid", ds.pairs("valid", "purchase")),
        ("click", ds.pairs("train", "click")))}
    assert keys["valid"] and keys["train"] <= keys["click"]
    assert not (keys["valid"] & keys["click"])  # held-out purchases are not clicks
    assert len(keys["click"]) == len(keys["train"]) + 2
    with pytest.raises(RawInputError, match="only the target's train pairs"):
        prepare(PrepareSpec(out=tmp_path / "x", sources=[
            parse_source("train", f"purchase={tr}"), parse_source("train", "click=@cart"),
            parse_source("test", f"purchase={te}")]))


def test_the_fast_parser_and_the_line_loop_read_the_same_pairs(tmp_path):
    """Tab/comma text goes through pyarrow.csv; every file it cannot take as the line loop
    would falls back to the loop, so both give the same pairs (and the loop's errors)."""
    import pyarrow as pa

    from data_prep import readers

    texts = {
        "a.tsv": "uid\tsid\n1\t10\n1\t11\r\n2 \t 10\n\n3\t12\n",
        "b.csv": "user,item,when\n1,10,x\n1,11,y\n",
        "c.csv": "1,10\n1,11,extra\n2,12\n",  # ragged: the loop
        "d.txt": "1  10\n1 11\n",  # whitespace-separated: the loop
        "e.csv": "\n\n1,10\n2,11\n",  # leading blank lines: the loop
        "f.csv": "alice,x\nbob , y\n",
        "g.tsv.gz": "1\t10\n2\t11\n",
    }
    for name, text in texts.items():
        path = write(tmp_path / name, text, gz=name.endswith(".gz"))
        u, i = readers.read_pairs(path)
        loop = list(zip(*[(a, b) for _, a, b in readers._text_rows(path, "auto")]))
        assert (u.to_pylist(), i.to_pylist()) == (list(loop[0]), list(loop[1])), name
        assert isinstance(u, pa.Array)
    fast = readers._read_text_arrow(tmp_path / "a.tsv", "auto", None)
    assert fast is not None and fast[0].to_pylist() == ["1", "1", "2", "3"]
    assert readers._read_text_arrow(tmp_path / "c.csv", "auto", None) is None
    seen = []
    readers.read_pairs(tmp_path / "a.tsv", progress=seen.append)
    assert seen and seen[-1] == 4


def test_integer_text_parsed_straight_to_int64_as_the_string_path_casts_it(tmp_path):
    """`ints=True` (prepare unless --ids str) reads integer logs into int64 columns: the values
    the string path gives once cast; any other token, or an empty id, takes the string path and
    its messages."""
    import pyarrow.compute as pc

    from data_prep import readers

    ok = write(tmp_path / "ok.csv", "user,item\n1, 10\n007,11\n-3,12\n")
    u, i = readers.read_pairs(ok, ints=True)
    su, si = readers.read_pairs(ok)
    assert isinstance(u, np.ndarray) and u.dtype == np.int64
    assert list(u) == pc.cast(su, pa.int64()).to_pylist() == [1, 7, -3]
    assert list(i) == [10, 11, 12]
    mixed = write(tmp_path / "mixed.csv", "1,10\nx7,11\n")
    assert readers.read_pairs(mixed, ints=True)[0].to_pylist() == ["1", "x7"]
    empty = write(tmp_path / "empty.csv", "1,10\n,11\n")
    with pytest.raises(RawInputError, match=r"empty\.csv: line 2: empty user id"):
        readers.read_pairs(empty, ints=True)
    te = write(tmp_path / "te.csv", "7,10\n")
    for ids, users in (("auto", 3), ("str", 4)):  # as text, 007 and 7 are two users
        s = spec(tmp_path / ids, {("train", "purchase"): ok, ("test", "purchase"): te})
        s.ids = ids
        meta = prepare(s, log=lambda m: None)
        assert meta["num_users"] == users and meta["id_types"]["user"] == ids.replace("auto", "int")
