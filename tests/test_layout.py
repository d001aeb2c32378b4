"""The package's shape: no import cycles between modules or packages, the benchmarks off the
library's path, and only the designated modules writing files."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mba_dist", "data_prep", "launch")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module of ours that `path` imports, at any depth of the file (lazy imports in
    functions count: they are dependencies all the same)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + [base]).strip(".")
            # `from pkg import mod` depends on pkg.mod (Python runs pkg/__init__ for any
            # submodule anyway); `from mod import name` depends on mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def _unit(module: str) -> str:
    """A module's package: mba_dist.train.fit -> mba_dist.train; top-level modules are their
    own unit (mba_dist.run_dir), and a package's __init__ belongs to the package."""
    parts = module.split(".")
    if parts[0] != "mba_dist":
        return parts[0]
    path = ROOT.joinpath(*parts)
    return module if path.is_dir() or len(parts) <= 2 else ".".join(parts[:2])


def test_no_import_cycles_between_modules():
    assert _cycle(_graph()) is None


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for m, deps in _graph().items():
        graph.setdefault(_unit(m), set()).update(_unit(d) for d in deps if _unit(d) != _unit(m))
    assert _cycle(graph) is None, _cycle(graph)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_outside_bench_and_launch_imports_the_benchmarks():
    for m, deps in _graph().items():
        if not m.startswith(("mba_dist.bench", "launch")):
            assert not {d for d in deps if d.startswith("mba_dist.bench")}, m
    assert not any(d.startswith("data_prep") for m, deps in _graph().items()
                   if m.startswith("mba_dist") for d in deps)


# Calls that create, replace or delete files. Who may make them, and why:
WRITES = ("open(", ".open(", "write_text(", "write_bytes(", "torch.save(", "write_table(",
          "atomic_write_bytes(", "atomic_write_parquet(", "atomic_dir(", "rmtree(", "unlink(",
          "mkdir(", "rename(", "replace(", "ParquetWriter(")
ALLOWED = {
    "mba_dist/run_dir.py": "the run directory's one owner",
    "mba_dist/search.py": "the search directory's one owner (its runs are run directories)",
    "mba_dist/files.py": "the atomic-write primitives",
    "mba_dist/train/checkpoint.py": "a stage's or a resumable state's shards (DCP) and its "
                                    "own file, into a directory its caller staged (the run "
                                    "directory, Ray's)",
    "mba_dist/data/format.py": "the dataset writer (called by data_prep)",
    "mba_dist/dist/local.py": "each local rank's result, in a temporary directory of its own",
    "mba_dist/bench/eval.py": "the bench's own --out directory",
    "mba_dist/bench/suite.py": "the bench's own --out directory",
    "mba_dist/bench/train.py": "the bench's own profile.txt",
}


def _write_calls(path: Path) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            src = ast.unparse(node.func) + "("
            name = src.rsplit(".", 1)[-1]
            if any(src == w or src.endswith(w) or name == w for w in WRITES):
                if src.endswith("replace(") and not src.startswith("os."):
                    continue  # str.replace / dataclasses.replace
                if src.endswith("open(") and not _opens_for_writing(node):
                    continue
                if src.endswith(("torch.save(", "write_table(")) and any(
                        isinstance(a, ast.Name) and a.id == "buf" for a in node.args[1:2]):
                    continue  # serialised into an io.BytesIO `buf`, written by someone else
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno} {src}")
    return hits


def _opens_for_writing(call: ast.Call) -> bool:
    """Whether `open(path, mode)`, `os.fdopen(fd, mode)` or `path.open(mode)` writes; no mode
    reads, a mode that is not a literal counts as writing."""
    at = 0 if isinstance(call.func, ast.Attribute) and call.func.attr == "open" else 1
    mode = (call.args[at] if len(call.args) > at
            else next((k.value for k in call.keywords if k.arg == "mode"), None))
    if mode is None:
        return False
    return not isinstance(mode, ast.Constant) or any(c in str(mode.value) for c in "wax+")


def test_only_the_designated_modules_write_files():
    offenders = [hit for p in sorted((ROOT / "mba_dist").rglob("*.py"))
                 if str(p.relative_to(ROOT)) not in ALLOWED for hit in _write_calls(p)]
    assert offenders == []
    # the check sees writes: the run directory's writers are found
    assert len(_write_calls(ROOT / "mba_dist/run_dir.py")) >= 5


@pytest.mark.parametrize("pkg", ["mba", "data", "tables", "train", "eval", "dist", "bench"])
def test_every_subpackage_says_what_lives_there_and_what_it_may_import(pkg):
    doc = ast.get_docstring(ast.parse((ROOT / "mba_dist" / pkg / "__init__.py").read_text()))
    assert doc and "import" in doc
    for f in (ROOT / "mba_dist" / pkg).glob("*.py"):
        if f.name != "__init__.py":
            assert f.name in doc, f"{pkg}/__init__.py does not mention {f.name}"


# The layers of DESIGN §0 and mba_dist/__init__.py, lowest first: each imports only earlier ones.
LAYERS = ["mba_dist.errors", "mba_dist.config", "mba_dist.files",
          "mba_dist.provenance", "mba_dist.tracking", "mba_dist.mba",
          "mba_dist.data", "mba_dist.dist", "mba_dist.eval", "mba_dist.tables", "mba_dist.train",
          "mba_dist.run_dir", "mba_dist.plots", "mba_dist.jobs", "mba_dist.search_lines", "mba_dist.search", "mba_dist.api", "mba_dist", "mba_dist.bench",
          "data_prep", "launch"]


def test_each_layer_imports_only_the_layers_below_it():
    units = {_unit(m) for m in _graph()}
    assert units == set(LAYERS), units ^ set(LAYERS)
    for m, deps in _graph().items():
        here = LAYERS.index(_unit(m))
        above = sorted({_unit(d) for d in deps if LAYERS.index(_unit(d)) > here})
        assert not above, f"{m} imports {above}"


def test_no_source_file_is_ignored_by_git():
    """A package file that .gitignore matches never reaches a clone (`data/` once hid
    mba_dist/data/)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(ROOT)) for pkg in PACKAGES + ("tests",)
             for p in (ROOT / pkg).rglob("*.py")]
    res = subprocess.run(["git", "check-ignore", *files], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.stdout.split() == []
