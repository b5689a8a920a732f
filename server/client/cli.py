"""``posters-query``: ask a running posters-serve for similar posters.

Output: a table (default), --json, and/or --sheet out.png (a contact sheet of
the query poster and its neighbours; pass --posters DIR to show real posters).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EPILOG = """examples:
  posters-query similar 1 -k 5
  posters-query like 1 2:0.5 --not 7 --sheet like.png --posters demo/catalog/posters
  posters-query image my_poster.jpg --json
  posters-query title "star quest"
  posters-query info
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posters-query", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", default="127.0.0.1:50051", help="server address (default %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default %(default)s)")
    p.add_argument("--token-file", type=Path, help="bearer token file (or set $POSTERS_TOKEN)")
    p.add_argument("--tls-ca", type=Path, help="PEM CA of the server certificate (enables TLS)")
    p.add_argument("--tls-cert", type=Path, help="client certificate, for mTLS")
    p.add_argument("--tls-key", type=Path, help="client key, for mTLS")
    p.add_argument("--tls-server-name", help="expected server name in its certificate")
    sub = p.add_subparsers(dest="command", required=True)

    def search_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-k", type=int, default=10, help="number of results (default %(default)s)")
        sp.add_argument("--exclude", type=int, nargs="+", default=[], metavar="ID", help="never return these")
        sp.add_argument("--candidates", type=int, nargs="+", default=[], metavar="ID", help="rank only these")
        sp.add_argument("--min-score", type=float, help="drop results below this cosine score")
        sp.add_argument("--nprobe", type=int, default=0, help="IVF lists to probe (0: bundle default)")
        sp.add_argument("--exact", action="store_true", help="exhaustive search")
        sp.add_argument("--json", action="store_true", help="print JSON")
        sp.add_argument("--sheet", type=Path, help="write a contact sheet PNG here")
        sp.add_argument("--posters", type=Path, help="poster folder, for the contact sheet")

    s = sub.add_parser("similar", help="posters like one item")
    s.add_argument("item_id", type=int)
    search_opts(s)
    s = sub.add_parser("like", help="posters like several items (ID or ID:WEIGHT), optionally unlike others")
    s.add_argument("items", nargs="+", help="ID or ID:WEIGHT")
    s.add_argument("--not", dest="negative", nargs="+", default=[], metavar="ID[:W]", help="items to move away from")
    search_opts(s)
    s = sub.add_parser("image", help="posters like an image file")
    s.add_argument("file", type=Path)
    search_opts(s)
    s = sub.add_parser("title", help="find items by title (case-insensitive substring)")
    s.add_argument("text")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--json", action="store_true", help="print JSON")
    s = sub.add_parser("info", help="the serving bundle and server limits")
    s.add_argument("--json", action="store_true", help="print JSON")
    return p


def _weighted(values: list[str]) -> tuple[tuple[int, float], ...]:
    out = []
    for v in values:
        item, _, weight = v.partition(":")
        out.append((int(item), float(weight) if weight else 1.0))
    return tuple(out)


def _print_result(result: Any, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "bundle_version": result.bundle_version,
                    "exact": result.exact,
                    "neighbors": [{**h.item._asdict(), "score": h.score} for h in result.hits],
                },
                indent=2,
            )
        )
        return
    print(f"{'rank':>4}  {'score':>6}  {'id':>8}  title  [genres]")
    for n, h in enumerate(result.hits, 1):
        print(f"{n:>4}  {h.score:6.3f}  {h.item.item_id:>8}  {h.item.title}  [{'|'.join(h.item.genres)}]")
    kind = "exact" if result.exact else "approximate"
    print(f"({len(result.hits)} results from bundle {result.bundle_version}, {kind})")


def run(args: argparse.Namespace) -> int:
    import grpc

    from server.client import PosterClient
    from server.client.sheet import contact_sheet
    from server.types import SearchOptions

    token = args.token_file.read_text().strip() if args.token_file else os.environ.get("POSTERS_TOKEN") or None
    with PosterClient(
        args.target,
        token=token,
        tls_ca=args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
        timeout=args.timeout,
        server_name=args.tls_server_name,
    ) as client:
        try:
            if args.command == "info":
                info = client.info()
                if args.json:
                    print(json.dumps(info, indent=2, default=str))
                else:
                    for key, value in info.items():
                        if key != "manifest":
                            print(f"{key:18} {value}")
                return 0
            if args.command == "title":
                items = client.find(args.text, args.limit)
                if args.json:
                    print(json.dumps([i._asdict() for i in items], indent=2))
                else:
                    for i in items:
                        print(f"{i.item_id:>8}  {i.title}  [{'|'.join(i.genres)}]")
                return 0
            options = SearchOptions(
                k=args.k,
                candidate_ids=tuple(args.candidates),
                exclude_ids=tuple(args.exclude),
                min_score=args.min_score,
                nprobe=args.nprobe,
                exact=args.exact,
            )
            query_image: bytes | Path | None = None
            if args.command == "similar":
                result = client.similar(args.item_id, options)
                query_title, query_image = _query_label(client, args.item_id, args.posters)
            elif args.command == "like":
                positive, negative = _weighted(args.items), _weighted(args.negative)
                result = client.like(positive, negative, options)
                first_title, query_image = _query_label(client, positive[0][0], args.posters)
                query_title = (
                    "like "
                    + first_title
                    + (f" +{len(positive) - 1}" if len(positive) > 1 else "")
                    + (f" not {len(negative)}" if negative else "")
                )
            else:
                data = args.file.read_bytes()
                query_image = data
                result = client.image(data, options)
                query_title = args.file.name
        except grpc.RpcError as exc:
            print(f"posters-query: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    _print_result(result, args.json)
    if args.sheet:
        contact_sheet(query_title, query_image, result.hits, args.posters).save(args.sheet)
        print(f"contact sheet: {args.sheet}", file=sys.stderr)
    return 0


def _query_label(client: Any, item_id: int, posters: Path | None) -> tuple[str, Path | None]:
    """The query item's title and (if a poster folder is given) its poster file."""
    item = client.items([item_id])[0]
    return item.title, (posters / item.poster if posters is not None and item.poster else None)


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
