#!/usr/bin/env python3
"""Fault loop: kill -9 posters-index builds at random moments; CURRENT must always be loadable.

Each trial starts a build (a poster catalog with or without the embedding cache, or precomputed
vectors with a neighbour table, so that kills land in embedding, index building, writing and
publishing) and SIGKILLs it after a random delay drawn from that kind of build's measured duration.
After every kill: CURRENT points to a complete bundle whose checksums verify, and no staging
directory is ever referenced. Finally a server is pointed at a bundle corrupted on purpose and must
keep serving its old one. Writes JSON + Markdown under benchmarks/results/.

  python scripts/fault_loop.py                 # 24 trials (~3 min)
  python scripts/fault_loop.py --trials 60 --seed 3
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench_common import ROOT, clustered_vectors, machine, write_results  # noqa: E402

PHASE_MARKERS = (("published build", "publish"), ("neighbour table", "neighbours"), ("IVF", "index"),
                 ("embedding", "embedding"), ("catalog:", "catalog"), ("embedder", "model"))


def _build_cmd(kind: str, tmp: Path, root: Path) -> list[str]:
    cmd = [sys.executable, "-m", "indexer.cli", "build", "--out", str(root)]
    if kind == "precomputed":
        return cmd + ["--embeddings", str(tmp / "vectors.npz"), "--index", "ivf", "--neighbours", "50"]
    cat = tmp / "catalog"
    cmd += ["--movies", str(cat / "movies.csv"), "--links", str(cat / "links.csv"), "--posters", str(cat / "posters"),
            "--pattern", "{tmdbId}.jpg", "--batch-size", "4", "--neighbours", "10"]
    return cmd + (["--no-cache"] if kind == "catalog-no-cache" else [])


def _phase(log: str) -> str:
    last = "start"
    for line in log.splitlines():
        for marker, phase in PHASE_MARKERS:
            if marker in line:
                last = phase
                break
    return last


def _check(root: Path) -> str:
    from indexer import bundle as bundles

    build_id = bundles.read_current(root)
    bundles.load_bundle(root / "builds" / build_id, verify=True)
    return build_id


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    from indexer.demo_catalog import write_demo_catalog

    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="posters-faults-"))
    write_demo_catalog(tmp / "catalog", count=48)
    np.savez(tmp / "vectors.npz", ids=np.arange(1, 30_001), vectors=clustered_vectors(30_000, 256, seed=4))
    root = tmp / "root"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    kinds = ("catalog", "catalog-no-cache", "precomputed")
    durations = {}
    for kind in kinds:  # one full build of each kind: a published baseline and the delay range
        t = time.perf_counter()
        subprocess.run(_build_cmd(kind, tmp, root), check=True, capture_output=True, env=env, cwd=ROOT)
        durations[kind] = time.perf_counter() - t
    rows, phases = [], collections.Counter()
    failures = 0
    for trial in range(args.trials):
        kind = kinds[trial % len(kinds)]
        before = _check(root)
        delay = rng.uniform(0.05, durations[kind] * 1.05)
        log_path = tmp / f"trial{trial}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(_build_cmd(kind, tmp, root), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=ROOT)
            try:
                proc.wait(timeout=delay)
                killed = False
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
        phase = _phase(log_path.read_text()) if killed else "finished"
        phases[phase] += 1
        try:
            after = _check(root)  # CURRENT names a complete bundle whose every checksum verifies
            ok = True
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            ok, after = False, f"{type(exc).__name__}: {exc}"
        failures += not ok
        rows.append({"trial": trial, "kind": kind, "delay_s": round(delay, 2), "killed": killed, "phase": phase,
                     "current_before": before, "current_after": after, "ok": ok})
        print(f"trial {trial:2d} {kind:17s} kill after {delay:5.2f}s in {phase:10s} -> "
              f"{'OK' if ok else 'BROKEN'} ({'unchanged' if after == before else 'new bundle'})", file=sys.stderr)
    # a running server refuses a corrupt new bundle and keeps its old one
    from indexer import bundle as bundles
    from server.reloader import BundleManager

    manager = BundleManager(root, image_search=False)
    assert manager.reload()
    serving = manager.current.version
    subprocess.run(_build_cmd("precomputed", tmp, root), check=True, capture_output=True, env=env, cwd=ROOT)
    newest = bundles.read_current(root)
    index_file = root / "builds" / newest / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
    refused = not manager.reload() and manager.current.version == serving and "index.faiss" in manager.last_error
    info = machine()
    md = (f"Machine: {info['cpu']}, {info['cores']} cores; {info['date']}. {args.trials} trials, "
          f"{sum(r['killed'] for r in rows)} killed; kill phases: {dict(phases)}; broken CURRENT: {failures}; "
          f"corrupt new bundle refused by a running server: {refused} ({manager.last_error}).\n")
    ok = failures == 0 and refused
    write_results("fault_loop", {"machine": info, "ok": ok, "trials": rows, "phases": dict(phases),
                                 "corrupt_refused": refused}, md + ("\nPASS\n" if ok else "\nFAIL\n"))
    print(md + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
