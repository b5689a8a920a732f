"""The Ray Data engine of ``posters-index embed``: decode in parallel tasks, embed in an actor pool.

The catalog's (item id, poster path) rows become Ray Data blocks; ``decode_batch`` tasks read each file once,
hash its bytes and decode them with the build's own function (``indexer.pipeline``'s prepare step: same size
limits, EXIF, mode conversion and resize policy); ``EmbedActor`` (one ``Embedder`` per actor, ``actors`` of
them) embeds the decoded batches; the driver receives the rows and writes the shards (``indexer.embed_job``).

Locally (no address) Ray starts on 127.0.0.1 without its dashboard, every service bound to the loopback
interface; with an address it joins that cluster, whose nodes need this package (``poster-similarity[ray]``)
and the posters at the same paths. Ray is imported only when a job starts (see ``import_ray``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from indexer.embed_job import EmbeddedBatch, RayOptions
from indexer.embedders import Embedder, EmbedderSpec
from indexer.embedders.embedder import spec_key
from indexer.embedding_shards import ShardEmbedder
from indexer.errors import BuildError, ImageError
from indexer.images import DecodeConfig

# the build's read-once, hash, decode step (indexer.pipeline), reused so both engines decode identically
from indexer.pipeline import _prepare as prepare_poster

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Ray turns a node address of 127.0.0.1 into the host's external IP (ray._private.services.resolve_ip_for_localhost)
# and its servers then listen on every interface, unless this switch (read when ray is imported) is off: with it,
# every process of a local Ray listens on 127.0.0.1 only (checked with ss).
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# per decode task; different from any actor's CPUs (>= 1), which also keeps Ray Data from fusing decoding into
# the actors: decoding stays in parallel tasks that feed the model
DECODE_TASK_CPUS = 0.5
BLOCKS_PER_ACTOR = 4  # at least this many input blocks per actor: decode tasks run in parallel, every actor works
MAX_BLOCK_ROWS = 128  # posters per input block: 128 decoded 224-px posters are 19 MB in the object store
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}  # TensorFlow's start-up chatter, as the CLI sets it for itself
MAX_ERROR_CHARS = 2000
# the pool starts all its actors before handing out work (so every actor embeds), or fails after this long
ACTOR_START_TIMEOUT_S = 600


def import_ray(local: bool) -> ModuleType:
    """``ray``, imported so that a local session binds to the loopback interface only (see LOCAL_ONLY_ENV)."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    import ray
    import ray.data
    import ray.exceptions
    import ray.util

    return ray


def local_cpus(options: RayOptions) -> int:
    """Logical CPUs for a local Ray: this machine's cores, and at least the actors' plus one decode task's."""
    return max(os.cpu_count() or 1, math.ceil(options.actors * options.actor_cpus + DECODE_TASK_CPUS))


def start_local_ray(num_cpus: int) -> None:
    """A Ray instance on this machine, every service bound to 127.0.0.1, no dashboard. Its workers inherit this
    process's environment."""
    ray = import_ray(local=True)
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address=LOOPBACK)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise BuildError(
            f"a local Ray expected to listen on {LOOPBACK}, got node address {node_ip}: ray was imported before "
            f"{LOCAL_ONLY_ENV}=0 was set; set it in the environment"
        )


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Ray for the length of a job: the caller's session if one is running (tests, notebooks), else the cluster
    at ``options.address``, else a local instance; a session started here is shut down on exit."""
    ray = import_ray(local=options.address is None)
    if ray.is_initialized():
        yield
        return
    if options.address:
        ray.init(address=options.address, runtime_env={"env_vars": WORKER_ENV})
    else:
        start_local_ray(options.num_cpus or local_cpus(options))
    try:
        yield
    finally:
        ray.shutdown()


def _check_resources(ray: ModuleType, options: RayOptions) -> None:
    needed = options.actors * options.actor_cpus + DECODE_TASK_CPUS
    have = float(ray.cluster_resources().get("CPU", 0.0))
    if have < needed:
        raise BuildError(
            f"Ray CPUs expected at least {needed:g} ({options.actors} actors x {options.actor_cpus:g} CPUs + "
            f"{DECODE_TASK_CPUS:g} for decoding), got {have:g}: fewer --actors, or a larger --num-cpus / cluster"
        )


def decode_batch(batch: dict[str, np.ndarray], decode: DecodeConfig) -> dict[str, np.ndarray]:
    """Read, hash and decode a block of posters (a Ray Data task); unusable ones carry their reason."""
    paths = batch["path"]
    n = len(paths)
    images = np.zeros((n, decode.size, decode.size, 3), np.uint8)
    hashes = [""] * n
    errors = [""] * n
    ok = np.zeros(n, bool)
    for i, path in enumerate(paths):
        try:
            prepared = prepare_poster(Path(str(path)), decode, None, None)
        except ImageError as exc:
            errors[i] = str(exc)
            continue
        assert prepared.image is not None
        images[i], hashes[i], ok[i] = prepared.image, prepared.key, True
    return {
        "item_id": np.asarray(batch["item_id"], np.int64),
        "content_hash": np.array(hashes, dtype=object),
        "error": np.array(errors, dtype=object),
        "ok": ok,
        "image": images,
    }


class EmbedActor:
    """One model per actor: embeds the decoded posters of each batch (failed rows pass through unembedded)."""

    def __init__(self, spec: EmbedderSpec, threads: int) -> None:
        import tensorflow as tf

        # before the first TensorFlow op: the actor uses the CPUs Ray reserved for it, not every core
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.embedder = Embedder(spec)
        side = self.embedder.input_size
        self.embedder.embed(np.zeros((1, side, side, 3), np.uint8))  # trace the model now, while the pool starts
        made_by = {"description": self.embedder.describe(), "spec_key": spec_key(spec)}
        self.made_by = json.dumps(made_by, sort_keys=True)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["ok"], bool)
        n = len(ok)
        vectors = np.zeros((n, self.embedder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.embedder.embed(np.ascontiguousarray(batch["image"][ok]))
        return {
            "item_id": batch["item_id"],
            "content_hash": batch["content_hash"],
            "error": batch["error"],
            "ok": ok,
            "embedding": vectors,
            "embedder": np.array([self.made_by] * n, dtype=object),
            "worker": np.array([self.worker] * n, dtype=object),
        }


def block_count(rows: int, actors: int) -> int:
    """Input blocks: at least BLOCKS_PER_ACTOR per actor, at most MAX_BLOCK_ROWS rows each."""
    return max(1, min(rows, max(actors * BLOCKS_PER_ACTOR, math.ceil(rows / MAX_BLOCK_ROWS))))


def _embedded(batch: dict[str, np.ndarray]) -> Iterator[EmbeddedBatch]:
    """A result batch as EmbeddedBatch objects, one per (worker, embedder) in it."""
    ok = np.asarray(batch["ok"], bool)
    ids = np.asarray(batch["item_id"], np.int64)
    keys = list(zip(batch["worker"].tolist(), batch["embedder"].tolist()))
    for worker, made_by in dict.fromkeys(keys):
        mine = np.array([k == (worker, made_by) for k in keys], bool)
        doc = json.loads(made_by)
        good, bad = mine & ok, mine & ~ok
        yield EmbeddedBatch(
            ids=ids[good],
            hashes=[str(h) for h in batch["content_hash"][good]],
            vectors=np.asarray(batch["embedding"][good], np.float32),
            embedder=ShardEmbedder(doc["description"], doc["spec_key"]),
            failures={int(i): str(e) for i, e in zip(ids[bad], batch["error"][bad])},
            worker=str(worker),
        )


def ray_batches(
    ids: np.ndarray,
    paths: list[str],
    spec: EmbedderSpec,
    decode: DecodeConfig,
    options: RayOptions,
    batch_size: int,
    progress: bool = True,
) -> Iterator[EmbeddedBatch]:
    """Embed ``paths`` (item ``ids``) with Ray Data; yields results as they arrive (in no particular order)."""
    ray = import_ray(local=options.address is None)
    with ray_session(options):
        _check_resources(ray, options)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S  # every actor ready before work is handed out
        # from_items builds the blocks here (from_pandas/from_arrow would start a task per block for metadata)
        items = [{"item_id": int(i), "path": p} for i, p in zip(ids.tolist(), paths)]
        ds = ray.data.from_items(items, override_num_blocks=block_count(len(items), options.actors))
        ds = ds.map_batches(
            decode_batch, fn_kwargs={"decode": decode}, batch_size=None, batch_format="numpy", num_cpus=DECODE_TASK_CPUS
        )
        ds = ds.map_batches(
            EmbedActor,
            fn_constructor_kwargs={"spec": spec, "threads": max(1, round(options.actor_cpus))},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            num_cpus=options.actor_cpus,
        )
        where = options.address or f"a local Ray ({LOOPBACK})"
        log.info(
            "Ray Data on %s: %d actors x %g CPUs, batches of %d", where, options.actors, options.actor_cpus, batch_size
        )
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                yield from _embedded(batch)
        except ray.exceptions.RayError as exc:
            raise BuildError(f"the Ray job failed: {' '.join(str(exc).split())[:MAX_ERROR_CHARS]}") from exc


def describe_cluster() -> dict[str, Any]:
    """CPUs and nodes of the running Ray session (for summaries and benchmarks)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "cpus": float(ray.cluster_resources().get("CPU", 0.0))}
