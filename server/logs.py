"""Log formatting for the entry points: text or one JSON object per line, ISO-8601 times with zone.

Native libraries (TensorFlow/absl, gRPC core) write straight to file descriptor 2, which would break a
JSON log stream with lines such as ``I0000 ... oneDNN custom operations are on``. ``configure`` can
route fd 2 through a pipe: each native line becomes a log record of the ``native`` logger (absl's
``I``/``W``/``E``/``F`` prefix sets its level: INFO lines are DEBUG records), while Python's own
``sys.stderr`` (and ``faulthandler``'s crash dumps) keep writing to the real stream.
"""

from __future__ import annotations

import datetime as dt
import faulthandler
import json
import logging
import os
import sys
import threading
from typing import TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
NATIVE_LOGGER = "native"
# absl/glog line prefixes -> the level their record gets (INFO noise stays out of the default stream)
NATIVE_LEVELS = {"I": logging.DEBUG, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def iso_time(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """Structured logs: time (ISO-8601, UTC), level, logger, message, plus extras such as request_id."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class IsoTextFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)


def _native_level(line: str) -> int:
    prefix = line[:1]
    return NATIVE_LEVELS.get(prefix, logging.WARNING) if line[1:5].isdigit() else logging.WARNING


def _pump(read_fd: int) -> None:
    log = logging.getLogger(NATIVE_LOGGER)
    with os.fdopen(read_fd, "r", errors="replace") as pipe:
        for line in pipe:
            text = line.rstrip()
            if text:
                log.log(_native_level(text), "%s", text)


def route_native_stderr() -> TextIO:
    """Point fd 2 at a pipe read by a daemon thread that logs each line; return the real stderr stream."""
    real = os.fdopen(os.dup(2), "w", buffering=1)
    faulthandler.enable(file=real)  # a crash dump must reach the terminal even though fd 2 is piped
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    threading.Thread(target=_pump, args=(read_fd,), name="native-stderr", daemon=True).start()
    sys.stderr = real
    return real


def configure(level: int = logging.INFO, json_lines: bool = False, capture_native: bool = False) -> None:
    """Configure the root logger; call only from entry points. ``capture_native``: see the module doc."""
    stream = route_native_stderr() if capture_native else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else IsoTextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_libraries()


def quiet_libraries() -> None:
    """FAISS logs every CPU-variant probe at INFO; keep only its warnings."""
    logging.getLogger("faiss").setLevel(logging.WARNING)
