"""The Python client of the PosterSimilarity service: ``PosterClient`` (library), ``posters-query``
(``server.client.cli``) and contact sheets (``server.client.sheet``).

Installs on its own: ``pip install poster-similarity`` brings gRPC, protobuf, NumPy and Pillow only
(no FAISS, pandas or TensorFlow; ``tests/test_client_install.py`` imports it with those blocked).
"""

from server.client.api import DEFAULT_TARGET, PosterClient

__all__ = ["DEFAULT_TARGET", "PosterClient"]
