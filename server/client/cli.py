"""posters-query: ask a running posters-serve for similar posters.

Output: a table (default), --json, and/or --sheet out.png (a contact sheet of
the query poster and its neighbours; pass --posters DIR to show real posters).
Connection options (--target, --timeout, --token-file, --tls-*) go before or
after the command.

Exit codes: 0 answered (also when nothing matched), 1 the server refused or
could not be reached (STATUS: details), 2 bad input (an id that is not an
integer, an unreadable file), 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.client.api import DEFAULT_TARGET

PROG = "posters-query"
EXIT_OK = 0
EXIT_RPC = 1  # the server answered with an error status, or could not be reached
EXIT_INPUT = 2  # bad input: as argparse's usage errors
EXIT_INTERNAL = 1  # a bug in this tool (reported in one line too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
MAX_ITEM_ID = 2**63 - 1  # item ids are FAISS int64 ids, never negative
MAX_INT32 = 2**31 - 1  # k, nprobe and limit are int32 in the protocol
DEFAULT_K = 10
DEFAULT_TIMEOUT = 30.0
DEFAULT_TITLE_LIMIT = 20
INFO_KEY_WIDTH = 18
ID_PATTERN = re.compile(r"^\+?[0-9]+$")  # no sign, exponent, underscore or fraction: ids are parsed exactly
TIME_FIELDS = ("loaded_at",)  # GetIndexInfo fields holding Unix seconds

EPILOG = """examples:
  posters-query similar 1 -k 5
  posters-query similar 1 --exclude 2,3 --exclude 4 --target 10.0.0.5:50051
  posters-query like 1 2:0.5 --not 7 --sheet like.png --posters demo/catalog/posters
  posters-query image my_poster.jpg --json
  posters-query title "star quest"
  posters-query info
"""


class InputError(Exception):
    """Bad input from the command line (exit 2, one line)."""


# ---- parsing -----------------------------------------------------------------------------------------------------


def _int_in(low: int, high: int, what: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} expected an integer from {low} to {high}, got {value}")
        return value

    return parse


def _finite(what: str, positive: bool = False) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} expected a number, got {text!r}") from None
        if not math.isfinite(value) or (positive and value <= 0):
            raise argparse.ArgumentTypeError(
                f"{what} expected a finite{' positive' if positive else ''} number, got {text!r}"
            )
        return value

    return parse


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--target, --timeout, --token-file, --tls-*: on the main parser (with defaults) and on every command (with
    SUPPRESS, so an option not given after the command does not overwrite one given before it)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection (before or after the command)")
    group.add_argument(
        "--target",
        default=default(DEFAULT_TARGET),
        metavar="HOST:PORT",
        help=f"server address (default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--timeout",
        type=_finite("--timeout", positive=True),
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        metavar="FILE",
        help="bearer token file (or set $POSTERS_TOKEN)",
    )
    group.add_argument(
        "--tls-ca", type=Path, default=default(None), metavar="PEM", help="CA of the server certificate (enables TLS)"
    )
    group.add_argument(
        "--tls-cert", type=Path, default=default(None), metavar="PEM", help="client certificate, for mTLS"
    )
    group.add_argument("--tls-key", type=Path, default=default(None), metavar="PEM", help="client key, for mTLS")
    group.add_argument(
        "--tls-server-name", default=default(None), metavar="NAME", help="expected server name in its certificate"
    )


def _search_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search")
    group.add_argument(
        "-k",
        type=_int_in(0, MAX_INT32, "-k"),
        default=DEFAULT_K,
        help=f"number of results (default {DEFAULT_K}; 0: the server default)",
    )
    group.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="never return these items (comma-separated, or repeat the option)",
    )
    group.add_argument(
        "--candidates",
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="rank only these items (comma-separated, or repeat the option)",
    )
    group.add_argument(
        "--min-score", type=_finite("--min-score"), metavar="SCORE", help="drop results below this cosine score"
    )
    group.add_argument(
        "--nprobe",
        type=_int_in(0, MAX_INT32, "--nprobe"),
        default=0,
        metavar="N",
        help="IVF lists to probe (default 0: the bundle's)",
    )
    group.add_argument("--exact", action="store_true", help="exhaustive search")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--sheet", type=Path, metavar="PNG", help="also write a contact sheet PNG here")
    out.add_argument(
        "--posters",
        type=Path,
        metavar="DIR",
        help="a local poster folder for the contact sheet (default: the thumbnails stored in the bundle, over the API)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _connection_options(p, suppress=False)
    conn = argparse.ArgumentParser(add_help=False)
    _connection_options(conn, suppress=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("similar", parents=[conn], help="posters like one item", description="Posters like one item.")
    s.add_argument("item_id", metavar="ITEM_ID", help="the query item's id")
    _search_options(s)
    s = sub.add_parser(
        "like",
        parents=[conn],
        help="posters like several items (ID or ID:WEIGHT), optionally unlike others",
        description="Posters like several items: the query is normalize(sum w*v(positive) - sum w*v(negative)).",
    )
    s.add_argument("items", nargs="+", metavar="ID[:WEIGHT]", help="items to move towards (weight default 1)")
    s.add_argument(
        "--not",
        dest="negative",
        action="append",
        default=[],
        metavar="ID[:W][,...]",
        help="items to move away from (comma-separated, or repeat the option)",
    )
    _search_options(s)
    s = sub.add_parser("image", parents=[conn], help="posters like an image file", description="Posters like an image.")
    s.add_argument("file", type=Path, metavar="FILE", help="image file (JPEG, PNG, WebP, ...)")
    _search_options(s)
    s = sub.add_parser(
        "title",
        parents=[conn],
        help="find items by title",
        description="Find items by title (case-insensitive). No match prints a line and exits 0.",
    )
    s.add_argument("text", metavar="TEXT", help="words of the title")
    s.add_argument(
        "--limit",
        type=_int_in(0, MAX_INT32, "--limit"),
        default=DEFAULT_TITLE_LIMIT,
        help=f"at most this many items (default {DEFAULT_TITLE_LIMIT})",
    )
    s.add_argument("--json", action="store_true", help="print JSON")
    s = sub.add_parser(
        "info",
        parents=[conn],
        help="the serving bundle and server limits",
        description="The serving bundle, the server's limits and its reload state (times as ISO-8601, UTC).",
    )
    s.add_argument("--json", action="store_true", help="print JSON")
    return p


def _item_id(text: str, what: str = "item id") -> int:
    stripped = text.strip()
    if not ID_PATTERN.match(stripped):
        raise InputError(f"{what} expected an integer, got {text!r}")
    value = int(stripped)
    if value > MAX_ITEM_ID:
        raise InputError(f"{what} expected an integer from 0 to {MAX_ITEM_ID}, got {text!r}")
    return value


def _id_list(values: Sequence[str], what: str) -> tuple[int, ...]:
    """``['3,4', '5']`` -> ``(3, 4, 5)``."""
    return tuple(_item_id(part, what) for value in values for part in value.split(","))


def _weighted(values: Sequence[str], what: str) -> tuple[tuple[int, float], ...]:
    """``['1', '2:0.5', '3,4:2']`` -> ``((1, 1.0), (2, 0.5), (3, 1.0), (4, 2.0))``."""
    out = []
    for value in values:
        for part in value.split(","):
            item, colon, weight = part.partition(":")
            if not colon:
                out.append((_item_id(item, what), 1.0))
                continue
            try:
                w = float(weight)
            except ValueError:
                w = math.nan
            if not math.isfinite(w):
                raise InputError(f"weight expected a finite number, got {weight!r} (in {part!r})")
            out.append((_item_id(item, what), w))
    return tuple(out)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


# ---- output ------------------------------------------------------------------------------------------------------


def _iso(seconds: float) -> str:
    """Unix seconds as ISO-8601 in UTC, e.g. 2025-01-31T12:00:00+00:00 ('-' for 0: never)."""
    if not seconds:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def _info_value(key: str, value: Any) -> str:
    """One GetIndexInfo field for people: times as ISO-8601, enums by name, lists joined, '-' for empty."""
    from server._proto import posters_pb2 as pb

    field = pb.IndexInfo.DESCRIPTOR.fields_by_name.get(key)
    if key in TIME_FIELDS and isinstance(value, (int, float)):
        return _iso(float(value))
    if hasattr(value, "ToDatetime"):  # a google.protobuf.Timestamp
        return _iso(value.ToDatetime(tzinfo=dt.UTC).timestamp()) if value.ByteSize() else "-"
    if field is not None and field.enum_type is not None and isinstance(value, int):
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else str(value)
    if isinstance(value, str):
        return value or "-"
    if not isinstance(value, (int, float, bool)):  # repeated fields
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _json_value(value: Any) -> Any:
    """JSON for what json.dumps cannot write: timestamps as ISO-8601, repeated fields as lists."""
    if hasattr(value, "ToDatetime"):
        return _info_value("", value)
    try:
        return list(value)
    except TypeError:
        return str(value)


def _label(item_id: int, item: Any, weight: float = 1.0) -> str:
    shown = f'#{item_id} "{item.title}"' if item is not None else f"#{item_id} (not in the bundle)"
    return shown if weight == 1.0 else f"{shown} (weight {weight:g})"


def _print_table(query: str, result: Any) -> None:
    print(f"query: {query}")
    print(f"{'rank':>4}  {'score':>6}  {'id':>8}  title  [genres]")
    for n, h in enumerate(result.hits, 1):
        print(f"{n:>4}  {h.score:6.3f}  {h.item.item_id:>8}  {h.item.title}  [{'|'.join(h.item.genres)}]")
    kind = "exact" if result.exact else "approximate"
    print(f"({len(result.hits)} results from bundle {result.bundle_version}, {kind})")
    missing = getattr(result, "missing_ids", ())
    if missing:
        print(f"(ids not in the bundle, skipped: {', '.join(map(str, missing))})")


def _print_json(query: dict[str, Any], result: Any) -> None:
    doc = {
        "query": query,
        "bundle_version": result.bundle_version,
        "exact": result.exact,
        "neighbors": [{**h.item._asdict(), "score": h.score} for h in result.hits],
    }
    print(json.dumps(doc, indent=2))


# ---- commands ----------------------------------------------------------------------------------------------------


def _items_by_id(client: Any, ids: Sequence[int]) -> dict[int, Any]:
    found = client.items(list(dict.fromkeys(ids)))
    return {item.item_id: item for item in getattr(found, "items", found)}


def _search(client: Any, args: argparse.Namespace) -> int:
    from server.client.sheet import contact_sheet
    from server.types import SearchOptions

    options = SearchOptions(
        k=args.k,
        candidate_ids=_id_list(args.candidates, "candidate id"),
        exclude_ids=_id_list(args.exclude, "exclude id"),
        min_score=args.min_score,
        nprobe=args.nprobe,
        exact=args.exact,
    )
    query_image: bytes | Path | None = None
    query_id: int | None = None  # the item whose poster heads the sheet
    if args.command == "similar":
        item_id = _item_id(args.item_id)
        query_id = item_id
        result = client.similar(item_id, options)
        item = _items_by_id(client, [item_id]).get(item_id)
        query_text = f"similar to {_label(item_id, item)}"
        sheet_title = item.title if item else f"#{item_id}"
        query_doc: dict[str, Any] = {"kind": "similar", "item_id": item_id, "title": item.title if item else None}
        if item is not None and item.poster and args.posters is not None:
            query_image = args.posters / item.poster
    elif args.command == "like":
        positive, negative = _weighted(args.items, "item id"), _weighted(args.negative, "--not item id")
        result = client.like(positive, negative, options)
        known = _items_by_id(client, [i for i, _ in positive + negative])
        query_text = "like " + ", ".join(_label(i, known.get(i), w) for i, w in positive)
        if negative:
            query_text += "; not " + ", ".join(_label(i, known.get(i), w) for i, w in negative)
        first = known.get(positive[0][0])
        query_id = positive[0][0]
        sheet_title = (
            f"like {first.title if first else positive[0][0]}"
            + (f" +{len(positive) - 1}" if len(positive) > 1 else "")
            + (f" not {len(negative)}" if negative else "")
        )

        def entries(pairs: tuple[tuple[int, float], ...]) -> list[dict[str, Any]]:
            return [{"item_id": i, "title": known[i].title if i in known else None, "weight": w} for i, w in pairs]

        query_doc = {"kind": "like", "positive": entries(positive), "negative": entries(negative)}
        if first is not None and first.poster and args.posters is not None:
            query_image = args.posters / first.poster
    else:
        data = _read(args.file, "image file")
        query_image = data
        result = client.image(data, options)
        query_text = f"image {args.file} ({len(data)} bytes)"
        sheet_title = args.file.name
        query_doc = {"kind": "image", "file": str(args.file), "bytes": len(data)}
    if args.json:
        _print_json(query_doc, result)
    else:
        _print_table(query_text, result)
    if args.sheet:
        thumbnails: dict[int, bytes] = {}
        if args.posters is None:  # no local poster folder: the bundle's thumbnails, over the API
            wanted = [h.item.item_id for h in result.hits] + ([query_id] if query_id is not None else [])
            thumbnails = _thumbnails(client, wanted)
            if query_image is None and query_id is not None:
                query_image = thumbnails.get(query_id)
        try:
            contact_sheet(sheet_title, query_image, result.hits, args.posters, thumbnails=thumbnails).save(args.sheet)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot write the contact sheet {args.sheet}: {exc}") from None
        print(f"contact sheet: {args.sheet}", file=sys.stderr)
    return EXIT_OK


def _thumbnails(client: Any, item_ids: list[int]) -> dict[int, bytes]:
    """Poster thumbnails from the server (GetPosters, in chunks of its limit); {} for a bundle without them."""
    import grpc

    chunk = int(client.info().get("max_posters") or len(item_ids) or 1)
    out: dict[int, bytes] = {}
    try:
        for start in range(0, len(item_ids), chunk):
            out.update({p.item_id: p.jpeg for p in client.posters(item_ids[start : start + chunk]).posters})
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # the bundle has no thumbnails: grey tiles
            raise
        print(f"{PROG}: note: {exc.details()}; the sheet shows placeholders (or pass --posters DIR)", file=sys.stderr)
    return out


def _title(client: Any, args: argparse.Namespace) -> int:
    items = client.find(args.text, args.limit)
    if args.json:
        print(json.dumps([i._asdict() for i in items], indent=2))
    elif not items:
        print(f"no titles match {args.text!r}")
    else:
        for i in items:
            print(f"{i.item_id:>8}  {i.title}  [{'|'.join(i.genres)}]")
    return EXIT_OK


def _info(client: Any, args: argparse.Namespace) -> int:
    info = client.info()
    if args.json:
        print(json.dumps(info, indent=2, default=_json_value))
        return EXIT_OK
    for key, value in info.items():
        if key != "manifest":
            print(f"{key:{INFO_KEY_WIDTH}} {_info_value(key, value)}")
    created = info.get("manifest", {}).get("created_at")
    if created:
        try:
            created = dt.datetime.fromisoformat(created).isoformat(timespec="seconds")
        except ValueError:
            pass  # shown as the manifest has it
        print(f"{'created_at':{INFO_KEY_WIDTH}} {created}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run one parsed command; InputError for bad input, grpc.RpcError for a refused call."""
    from server.client import PosterClient

    token = _read(args.token_file, "token file").decode().strip() if args.token_file else None
    token = token or os.environ.get("POSTERS_TOKEN") or None
    tls = {name: getattr(args, name) for name in ("tls_ca", "tls_cert", "tls_key")}
    for name, path in tls.items():
        if path is not None:
            _read(path, f"--{name.replace('_', '-')} file")  # one line now, not a traceback inside grpc
    with PosterClient(
        args.target,
        token=token,
        tls_ca=args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
        timeout=args.timeout,
        server_name=args.tls_server_name,
    ) as client:
        if args.command == "info":
            return _info(client, args)
        if args.command == "title":
            return _title(client, args)
        return _search(client, args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import grpc

    # Every failure is one line on stderr, never a traceback.
    try:
        return run(args)
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"{PROG}: {code.name if code else 'ERROR'}: {details}", file=sys.stderr)
        return EXIT_RPC
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, never a traceback
        print(f"{PROG}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
