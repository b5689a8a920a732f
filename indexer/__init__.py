"""Offline poster indexer: catalog -> decoded posters -> CNN embeddings -> FAISS bundle."""

import os as _os

__version__ = "0.1.0"

# As in server/__init__.py: OpenMP reads this when FAISS is first imported. Idle OpenMP threads that spin
# (the default) steal the second core from the build's single-thread latency measurements, which tune the
# search parameters the server will use with the same policy.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
