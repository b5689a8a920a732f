"""Entry points check that their optional dependencies are installed before importing them.

The base install is the client only; ``posters-index`` needs ``[index]`` and ``posters-serve``
``[serve]``. Without them, the command says which extra to install instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

EXIT_MISSING_EXTRA = 2
INDEX_MODULES = ("faiss", "tensorflow", "keras", "pandas", "pydantic")
SERVE_MODULES = INDEX_MODULES + (
    "grpc_reflection",
    "prometheus_client",
    "cryptography",
    "threadpoolctl",
    "rapidfuzz",
    "cv2",
)


def require(prog: str, extra: str, modules: tuple[str, ...]) -> None:
    """Exit with one line naming the extra to install when any of ``modules`` is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"{prog}: error: needs the [{extra}] extra (missing: {', '.join(missing)}); install it with "
            f"pip install 'poster-similarity[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_MISSING_EXTRA)
