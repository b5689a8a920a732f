"""gRPC poster similarity service: searcher core, servicer, hot reload, client."""

import os as _os

# Read by OpenMP when FAISS is first imported: must be set before anything imports faiss
# (server.runtime explains; server.runtime.apply warns when it was too late).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
