"""Layer-file fuzzing in CI: the short form of ``scripts/fuzz_layers.py``.

Seeds are real layers (a daemon ingests, flushes and compacts: L0 and L1 deltas, a zstd
image layer). Hypothesis picks mutations of them (kind, seed, the mutation's randomness);
the script then runs every mutant through ``pageserver layer dump --values`` and ``layer
ls`` (forked children with the package pre-imported, one in 10 the real executable) and
one in 25 through a daemon's ``get``, each with ``RLIMIT_AS`` = 1 GiB and a timeout. A mutant
may be read fine or refused with a one-line error; it must never hang, print a traceback,
blow up memory or leak a raw Python error out of the daemon.

Two regression tests pin the known bugs the fuzzing found first: a B-tree child pointer
that points back up (a cycle) and a zstd bomb in an image layer.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fuzz_layers.py"
MIB = 1024 * 1024
#: Mutants in the short run (the long run is ``scripts/fuzz_layers.py --iterations N``).
SHORT_MUTANTS = 240


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_layers"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


F: Any = _load_script()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``seeds/`` (real layer files) and ``template/`` (the data dir they came from)."""
    out = tmp_path_factory.mktemp("fuzz")
    F.generate_seeds(out, "std-fs")
    return out


@pytest.fixture(scope="module")
def seeds(fuzz_dir: Path) -> list[Any]:
    seeds: list[Any] = F.load_seeds(fuzz_dir / "seeds")
    kinds = {s.tag.split(":")[0] for s in seeds}
    assert {"L0", "L1", "image"} <= kinds, [s.tag for s in seeds]
    for kind in ("delta", "image"):
        assert any(s.kind == kind and s.internal_nodes() for s in seeds), (
            f"no {kind} seed with a multi-level B-tree: {[s.tag for s in seeds]}"
        )
    return seeds


def _describe(rep: dict[str, Any]) -> str:
    lines = [f"classes: {rep['classes']}", f"by kind: {json.dumps(rep['by_kind'])}"]
    for r in rep["first_bad"][:10]:
        bad = {t: f"{v['class']}: {v['reason'][:160]}" for t, v in r["runs"].items()
               if v["class"] in F.BAD}  # fmt: skip
        lines.append(f"  {r['kind']}/{r['variant']} of {r['seed_tag']}: {bad}")
        if r["saved"]:
            lines.append(f"    repro: {r['saved']}/repro.sh")
    return "\n".join(lines)


def test_fuzz_layers_short(seeds: list[Any], fuzz_dir: Path, tmp_path: Path) -> None:
    """A few hundred hypothesis-chosen mutants: no hang, traceback or blow-up anywhere."""
    mutants: list[Any] = []

    @settings(
        max_examples=SHORT_MUTANTS,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        kind=st.sampled_from(F.KINDS),
        seed_index=st.integers(0, len(seeds) - 1),
        rng_seed=st.integers(0, 2**64 - 1),
    )
    def collect(kind: str, seed_index: int, rng_seed: int) -> None:
        rng = random.Random(rng_seed)
        try:
            m = F.MUTATORS[kind](seeds[seed_index], rng)
        except F.NotApplicable:
            m = F.mutate(seeds, kind, rng)
        mutants.append((m, F._queries(m, 4, rng)))

    collect()
    # Every kind at least twice, whatever hypothesis drew.
    rng = random.Random(7)
    for kind in F.KINDS:
        for _ in range(2):
            m = F.mutate(seeds, kind, rng)
            mutants.append((m, F._queries(m, 4, rng)))

    manifest = []
    for i, (m, queries) in enumerate(mutants):
        path = F.write_mutant(m, tmp_path / "mutants" / f"m{i}")
        manifest.append({"path": str(path), "kind": m.kind, "variant": m.variant,
                         "seed": m.seed.name, "seed_tag": m.seed.tag, "detail": m.detail,
                         "queries": queries})  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--manifest", str(tmp_path / "manifest.json"), "--json",
         "--out", str(fuzz_dir), "--jobs", "2", "--timeout", "5", "--get-timeout", "5",
         "--exec-every", "10", "--daemon", "--daemon-every", "25", "--seed", "1"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert p.stdout.strip(), f"fuzz_layers printed nothing (exit {p.returncode}):\n{p.stderr}"
    rep = json.loads(p.stdout)
    assert rep["mutants"] == len(manifest)
    assert rep["by_tool"].get("daemon"), "no mutant went through the daemon"
    classes = rep["classes"]
    print(f"{rep['mutants']} mutants in {elapsed:.1f}s: {classes}")
    assert classes["ok"] + classes["clean_error"] == rep["mutants"], _describe(rep)


# -- the known bugs ----------------------------------------------------------------------


def _multi_level(seeds: list[Any], kind: str) -> Any:
    return next(s for s in seeds if s.kind == kind and s.internal_nodes())


def _tail(text: str, n: int = 12) -> str:
    """The last ``n`` distinct lines (a MemoryError storm repeats the same few)."""
    out: list[str] = []
    for line in reversed(text.splitlines()):
        if line.strip() and line not in out:
            out.append(line)
        if len(out) == n:
            break
    return "\n".join(reversed(out))


def _assert_clean_error(res: Any, what: str) -> None:
    assert not res.timed_out, f"{what}: no exit after {res.elapsed:.0f}s (hang)"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.rc == 1 and len(lines) == 1 and "Traceback" not in res.stderr, (
        f"{what}: want exit 1 with one line on stderr, got exit {res.rc} / signal {res.sig} "
        f"(peak RSS {res.maxrss_kib // 1024} MiB), stderr ends:\n{_tail(res.stderr)}"
    )


def _pageserver(*args: str) -> list[str]:
    return [*F.pageserver_command(), *args]


@pytest.mark.parametrize("surface", ["dump", "ls", "get"])
@pytest.mark.parametrize("layer_kind", ["delta", "image"])
def test_btree_cycle_is_a_clear_error(
    seeds: list[Any], fuzz_dir: Path, tmp_path: Path, surface: str, layer_kind: str
) -> None:
    """A child pointer aimed back at the root: ``layer dump`` must refuse the file with one
    line (not loop for ever), ``layer ls`` must mark it INVALID (not valid), and a daemon
    must refuse to start naming it or answer ``get`` with an error (not hang its loop)."""
    seed = _multi_level(seeds, layer_kind)
    m = F.make_cycle(seed, random.Random(1), "to_root")
    path = F.write_mutant(m, tmp_path / "m")
    if surface == "dump":
        res = F.run_exec(_pageserver("layer", "dump", "--values", str(path)), timeout=30)
        _assert_clean_error(res, "layer dump of a B-tree with a cycle")
    elif surface == "ls":
        res = F.run_exec(_pageserver("layer", "ls", str(path.parent)), timeout=30)
        assert not res.timed_out, "layer ls hung on a B-tree with a cycle"
        assert res.rc == 1 and "INVALID" in res.stdout, (
            f"layer ls must mark a B-tree with a cycle INVALID; exit {res.rc}:\n"
            f"{res.stdout}{_tail(res.stderr)}"
        )
        _assert_clean_error(res, "layer ls of a B-tree with a cycle")
    else:
        assert m.target is not None
        queries = [seed.query(m.target)]  # a key whose lookup walks into the cycle
        r = F.daemon_check_result(
            str(fuzz_dir / "template"), seed.name, str(path), queries, "std-fs", 10.0,
            F.pageserver_command(), mem_limit=1024 * MIB,
        )  # fmt: skip
        cls, reason = F.classify_daemon_result(r, seed.name, 512 * 1024)
        assert cls in (F.CLEAN, F.OK), f"daemon get on a B-tree with a cycle: {cls}: {reason}"
        if r["phase"] == "get":
            assert all(q["outcome"] == "error" for q in r["gets"]), r["gets"]


@pytest.mark.parametrize("surface", ["dump", "get"])
def test_zstd_bomb_is_a_clear_error(
    seeds: list[Any], fuzz_dir: Path, tmp_path: Path, surface: str
) -> None:
    """An image blob marked zstd whose 64 KiB frame inflates to 2 GiB (no content size in
    the frame header, so only decompressing finds out): a clear error, and no more memory
    than about the largest value a ``put`` can carry (``max_frame_bytes``, 16 MiB)."""
    seed = _multi_level(seeds, "image")
    m = F.make_zstd_bomb(seed, random.Random(3), total=2 << 30, content_size=False)
    path = F.write_mutant(m, tmp_path / "m")
    allowance_kib = 4 * 16 * 1024  # a few copies of a 16 MiB value
    if surface == "dump":
        base = F.run_exec(
            _pageserver("layer", "dump", "--values", str(fuzz_dir / "seeds" / seed.name)),
            timeout=60,
        )
        assert base.rc == 0, base.stderr
        res = F.run_exec(_pageserver("layer", "dump", "--values", str(path)), timeout=60)
        _assert_clean_error(res, "layer dump --values of a zstd bomb")
        assert res.maxrss_kib <= base.maxrss_kib + allowance_kib, (
            f"layer dump of a zstd bomb peaked at {res.maxrss_kib // 1024} MiB "
            f"(the seed: {base.maxrss_kib // 1024} MiB)"
        )
    else:
        assert m.target is not None
        queries = [seed.query(m.target)]
        template = str(fuzz_dir / "template")
        base = F.daemon_check_result(
            template, seed.name, str(fuzz_dir / "seeds" / seed.name), queries, "std-fs", 30.0,
            F.pageserver_command(), mem_limit=1024 * MIB,
        )  # fmt: skip
        assert base["gets"][0]["outcome"] == "ok", base
        r = F.daemon_check_result(
            template, seed.name, str(path), queries, "std-fs", 30.0, F.pageserver_command(),
            mem_limit=1024 * MIB,
        )  # fmt: skip
        cls, reason = F.classify_daemon_result(r, seed.name, 1 << 30)
        assert cls == F.CLEAN, f"daemon get of a zstd bomb: {cls}: {reason}"
        assert r["phase"] == "start" or r["gets"][0]["outcome"] == "error", r["gets"]
        assert r["daemon_maxrss_kib"] <= base["daemon_maxrss_kib"] + allowance_kib, (
            f"the daemon peaked at {r['daemon_maxrss_kib'] // 1024} MiB on a zstd bomb "
            f"(on the seed: {base['daemon_maxrss_kib'] // 1024} MiB)"
        )
