#!/usr/bin/env python3
"""Fault loop: kill -9 posters-index builds at random moments; CURRENT must always be loadable.

Each trial starts a build (a poster catalog with or without the embedding cache, or precomputed
vectors with an IVF index and a neighbour table), waits for the log line that starts its target phase
(embedding, index, neighbour table, writing the bundle, publishing), and SIGKILLs it a random delay
into that phase.
After every kill: CURRENT points to a complete bundle whose checksums verify, and no staging
directory is ever referenced. Then write failures: builds under a random file-size limit
(RLIMIT_FSIZE, i.e. ``ulimit -f``) and builds into a tiny tmpfs that fills up (ENOSPC; needs root to
mount, skipped otherwise) must fail with exit code 2 and one line, and every bundle ever published
must load. Finally a server is pointed at a bundle corrupted on purpose and must keep serving its
old one. Writes JSON + Markdown under benchmarks/results/.

  python scripts/fault_loop.py                 # 25 kills + 10 file-size + 10 full-disk trials (~4 min)
  python scripts/fault_loop.py --trials 60 --write-trials 20 --seed 3
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

import numpy as np
from bench_common import ROOT, clustered_vectors, machine, write_results

# kill targets: a log line that starts the phase, and the longest random delay after it
TARGETS = (
    ("embedding", "embedding ", 2.0),
    ("index", "building index", 0.5),
    ("neighbours", "neighbour table", 1.0),
    ("write", "writing bundle", 0.05),
    ("publish", "publishing build", 0.005),
)


def _build_cmd(kind: str, tmp: Path, root: Path) -> list[str]:
    cmd = [sys.executable, "-m", "indexer.cli", "build", "--out", str(root), "--quiet"]
    if kind == "precomputed":
        return cmd + ["--embeddings", str(tmp / "vectors.npz"), "--index", "ivf", "--neighbours", "50"]
    if kind == "small":  # write-fault trials: every file of the bundle, built in seconds
        return cmd + ["--embeddings", str(tmp / "small.npz"), "--index", "ivf", "--neighbours", "50"]
    cat = tmp / "catalog"
    cmd += [
        "--movies",
        str(cat / "movies.csv"),
        "--links",
        str(cat / "links.csv"),
        "--posters",
        str(cat / "posters"),
        "--pattern",
        "{tmdbId}.jpg",
        "--batch-size",
        "4",
        "--neighbours",
        "10",
    ]
    return cmd + (["--no-cache"] if kind == "catalog-no-cache" else [])


def _check(root: Path) -> str:
    from indexer import bundle as bundles

    build_id = str(bundles.read_current(root))
    bundles.load_bundle(root / "builds" / build_id, verify=True)
    return build_id


def _published_all_load(root: Path) -> list[str]:
    """Problems with any published bundle (every one must load, not just CURRENT's)."""
    from indexer import bundle as bundles

    problems = []
    for build_id in bundles.list_builds(root):
        try:
            bundles.load_bundle(root / "builds" / build_id, verify=True)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{build_id}: {exc}")
    if (root / "CURRENT").exists():
        try:
            _check(root)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"CURRENT: {exc}")
    return problems


def _write_fault_trials(tmp: Path, rng: random.Random, trials: int, env: dict[str, str]) -> list[dict]:
    """Builds under a file-size limit, and into a tmpfs that fills up; every published bundle must load."""
    import resource

    rows: list[dict] = []
    probe = tmp / "probe"
    np.savez(tmp / "small.npz", ids=np.arange(1, 5_001), vectors=clustered_vectors(5_000, 128, seed=6))
    subprocess.run(_build_cmd("small", tmp, probe), check=True, capture_output=True, env=env, cwd=ROOT)
    sizes = [f.stat().st_size for f in next((probe / "builds").iterdir()).iterdir()]
    bundle_bytes, largest = sum(sizes), max(sizes)
    for trial in range(trials):
        limit = rng.randint(1024, largest + 4096)
        root = tmp / f"fsize-{trial}"

        def set_limit(limit: int = limit) -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        first = subprocess.run(
            _build_cmd("small", tmp, root),
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            preexec_fn=set_limit,
        )
        problems = _published_all_load(root)
        ok = first.returncode in (0, 2) and "Traceback" not in first.stderr and not problems
        rows.append(
            {
                "kind": "file-size",
                "limit_bytes": limit,
                "exit": first.returncode,
                "ok": ok,
                "problems": problems,
                "message": first.stderr.strip().splitlines()[-1:],
            }
        )
        print(
            f"fsize {trial:2d} limit {limit:9d} B -> exit {first.returncode} {'OK' if ok else 'BROKEN'}",
            file=sys.stderr,
        )
    mount = tmp / "small-disk"
    mount.mkdir()
    for trial in range(trials):
        size = int(bundle_bytes * rng.uniform(0.3, 2.6))
        if (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
            ).returncode
            != 0
        ):
            print("full-disk trials skipped: cannot mount a tmpfs (needs root)", file=sys.stderr)
            break
        try:
            root = mount / "root"
            exits = []
            messages = []
            for _ in range(3):  # keep building until the disk is full; every published bundle must still load
                out = subprocess.run(
                    _build_cmd("small", tmp, root) + ["--keep", "5"],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=ROOT,
                )
                exits.append(out.returncode)
                messages.append(out.stderr.strip().splitlines()[-1:] if out.returncode else [])
                if "Traceback" in out.stderr:
                    exits.append(-1)
            problems = _published_all_load(root)
            ok = set(exits) <= {0, 2} and not problems
            rows.append(
                {
                    "kind": "full-disk",
                    "disk_bytes": size,
                    "exits": exits,
                    "ok": ok,
                    "problems": problems,
                    "messages": messages,
                }
            )
            print(f"disk  {trial:2d} size {size:10d} B -> exits {exits} {'OK' if ok else 'BROKEN'}", file=sys.stderr)
        finally:
            subprocess.run(["umount", str(mount)], check=False)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=25)
    p.add_argument("--write-trials", type=int, default=10, help="file-size and full-disk trials (each)")
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
    for kind in kinds:  # a published baseline of each kind
        subprocess.run(_build_cmd(kind, tmp, root), check=True, capture_output=True, env=env, cwd=ROOT)
    rows: list[dict[str, object]] = []
    phases: collections.Counter[str] = collections.Counter()
    failures = 0
    for trial in range(args.trials):
        phase, marker, max_delay = TARGETS[trial % len(TARGETS)]
        kind = (
            "precomputed"
            if phase in ("index", "neighbours", "write", "publish")
            else ("catalog-no-cache" if trial % 2 else "catalog")
        )
        before = _check(root)
        delay = rng.uniform(0.0, max_delay)
        log_lines: list[str] = []
        proc = subprocess.Popen(
            _build_cmd(kind, tmp, root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, text=True
        )
        assert proc.stdout is not None
        killed = False
        for line in proc.stdout:  # the build's own log says when the target phase starts
            log_lines.append(line)
            if marker in line:
                time.sleep(delay)  # a random point inside the phase (bounded by max_delay)
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        proc.wait()
        phases[phase if killed else "finished"] += 1
        try:
            after = _check(root)  # CURRENT names a complete bundle whose every checksum verifies
            ok = True
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            ok, after = False, f"{type(exc).__name__}: {exc}"
        failures += not ok
        rows.append(
            {
                "trial": trial,
                "kind": kind,
                "target": phase,
                "delay_s": round(delay, 4),
                "killed": killed,
                "current_before": before,
                "current_after": after,
                "ok": ok,
            }
        )
        print(
            f"trial {trial:2d} {kind:17s} kill {delay:6.3f}s into {phase:10s} -> "
            f"{'OK' if ok else 'BROKEN'} ({'unchanged' if after == before else 'new bundle'})",
            file=sys.stderr,
        )
    write_rows = _write_fault_trials(tmp, rng, args.write_trials, env)
    write_broken = sum(not r["ok"] for r in write_rows)
    # a running server refuses a corrupt new bundle and keeps its old one
    from indexer import bundle as bundles
    from server.reloader import BundleManager

    manager = BundleManager(root, image_search=False)
    assert manager.reload()
    serving = manager.require().version
    subprocess.run(_build_cmd("precomputed", tmp, root), check=True, capture_output=True, env=env, cwd=ROOT)
    newest = str(bundles.read_current(root))
    index_file = root / "builds" / newest / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
    refused = not manager.reload() and manager.require().version == serving and "index.faiss" in manager.last_error
    by_kind = collections.Counter(r["kind"] for r in write_rows)
    info = machine()
    md = (
        f"Machine: {info['cpu']}, {info['cores']} cores; {info['date']}. {args.trials} trials, "
        f"{sum(bool(r['killed']) for r in rows)} killed; kill phases: {dict(phases)}; broken CURRENT: {failures}; "
        f"corrupt new bundle refused by a running server: {refused} ({manager.last_error}).\n"
        f"Write faults: {dict(by_kind)} trials; broken (a published bundle that fails to load, a traceback, "
        f"or an exit code other than 0/2): {write_broken}.\n"
    )
    ok = failures == 0 and refused and write_broken == 0
    write_results(
        "fault_loop",
        {
            "machine": info,
            "ok": ok,
            "trials": rows,
            "write_trials": write_rows,
            "phases": dict(phases),
            "corrupt_refused": refused,
        },
        md + ("\nPASS\n" if ok else "\nFAIL\n"),
    )
    print(md + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
