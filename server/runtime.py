"""Process-wide FAISS/BLAS settings for serving, applied by ``create_server`` (so tests and library
users run the production configuration, not only ``posters-serve``).

- Each request thread runs FAISS single-threaded (``omp_set_num_threads`` is per calling thread;
  the searcher sets it in every request thread): FAISS's parallel single-query path is slower than
  one thread on 2 cores, and concurrent requests then use the cores.
- BLAS (OpenBLAS) single-threaded, for the same reason (``threadpoolctl`` limits it at run time).
- FAISS's BLAS threshold lowered so a ``BatchSearch`` of >= 8 vector queries at d = 512 (>= 4 at
  d = 1280) is one matrix multiply instead of a scan per query (8 queries at 60k x 1280: 52 ms
  instead of 204 ms); FAISS's default (128000) would need 100+ queries.
- ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads must not spin) is read by OpenMP when FAISS is
  first imported, so it can only be set before that: ``server/__init__.py`` sets it as a default
  and ``apply`` warns when FAISS was loaded with another policy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import faiss
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

BLAS_THRESHOLD = 8 * 512
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
WAIT_POLICY = "PASSIVE"
BLAS_THREADS = 1


@dataclass(frozen=True)
class ProcessSettings:
    blas_threshold: int
    blas_threads: int
    omp_wait_policy: str


def apply() -> ProcessSettings:
    """Apply the serving settings to this process (idempotent) and return what is in force."""
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    threadpool_limits(limits=BLAS_THREADS, user_api="blas")
    policy = os.environ.get(WAIT_POLICY_ENV, "")
    if policy.upper() != WAIT_POLICY:
        log.warning(
            "%s is %r, not %s: idle OpenMP threads may spin (set it before FAISS is imported)",
            WAIT_POLICY_ENV,
            policy,
            WAIT_POLICY,
        )
    return current()


def current() -> ProcessSettings:
    from threadpoolctl import threadpool_info

    blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return ProcessSettings(
        int(faiss.cvar.distance_compute_blas_threshold), max(blas, default=0), os.environ.get(WAIT_POLICY_ENV, "")
    )
