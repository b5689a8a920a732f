"""The client installs and runs without the server's heavy packages (issue #11, item 4).

A subprocess blocks FAISS, TensorFlow/Keras, pandas, pydantic and the other server/indexer-only
packages at import time, then imports the client, talks to a real server and draws a contact sheet.
``scripts/check_client_install.sh`` does the same from a real client-only install in an empty venv.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.grpc_helpers import serve

ROOT_DIR = Path(__file__).resolve().parent.parent
BLOCKED = (
    "faiss",
    "tensorflow",
    "keras",
    "pandas",
    "pydantic",
    "sklearn",
    "matplotlib",
    "tqdm",
    "prometheus_client",
    "cryptography",
    "threadpoolctl",
    "grpc_reflection",
    "imagehash",
    "skimage",
    "rapidfuzz",
    "cv2",
)

CLIENT_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: the client must not need it")
            return None

    sys.meta_path.insert(0, Block())
    from server.client import PosterClient
    from server.client.cli import main
    from server.client.sheet import contact_sheet
    from server.types import SearchOptions

    with PosterClient({target!r}) as client:
        result = client.similar(100, SearchOptions(k=3))
        assert len(result.hits) == 3, result
        contact_sheet("query", None, result.hits, None).save({sheet!r})
    code = main(["--target", {target!r}, "info"])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    sys.exit(code)
""")


def test_client_runs_with_server_packages_blocked(vectors_root, tmp_path: Path) -> None:
    root, _, _ = vectors_root
    with serve(root) as served:
        script = CLIENT_SCRIPT.format(blocked=BLOCKED, target=served.target, sheet=str(tmp_path / "sheet.png"))
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT_DIR, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "item_count" in out.stdout and "600" in out.stdout
    assert (tmp_path / "sheet.png").stat().st_size > 0


def test_the_blocker_really_blocks(tmp_path: Path) -> None:
    """The check above would pass vacuously if blocking did nothing: importing a server module must fail."""
    script = (
        CLIENT_SCRIPT.split("from server.client import PosterClient")[0].format(blocked=BLOCKED)
        + "import server.searcher\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT_DIR, timeout=120)
    assert out.returncode != 0 and "is blocked" in out.stderr
