#!/usr/bin/env python
"""Look after a gallery written by data_scripts/embed.py (a FAISS folder, a Milvus Lite .db file or a Milvus server
URI): say what it holds, or delete rows by name, by identity, or older than a time (retention).

    python data_scripts/gallery.py info --index outputs/gallery-synthetic
    python data_scripts/gallery.py delete --index gallery.db --pid 17 23          # forget two identities
    python data_scripts/gallery.py delete --index DIR --older-than 2026-05-01    # retention
    python data_scripts/gallery.py delete --index http://host:19530 --collection city --older-than 30d

A deleted row is never returned by a search again. A FAISS folder is rewritten without the rows (a killed run
leaves it as it was); Milvus marks them deleted at once and drops them from disk at its next compaction. Adding
rows is data_scripts/embed.py --append. Bad input is one line naming the argument, exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from mmreid.errors import UsageError, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("info", "print what the gallery holds (one JSON object)"),
                            ("delete", "delete rows by --name, --pid or --older-than")):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("--index", required=True, help="a FAISS folder, a Milvus Lite .db file or a server URI")
        q.add_argument("--collection", default=None, help="Milvus: the collection (default: gallery)")
        if name == "delete":
            q.add_argument("--name", nargs="+", default=None, help="rows with these names")
            q.add_argument("--pid", nargs="+", type=int, default=None, help="rows of these identities")
            q.add_argument("--older-than", default=None,
                           help="rows whose time is before this: ISO 8601, unix seconds, or an age such as 30d / 12h")
    args = p.parse_args(argv)
    if args.command == "delete":
        from mmreid.retrieval.filters import RowFilter

        rules = [r for r in (args.name, args.pid, args.older_than) if r is not None]
        if len(rules) != 1:
            raise UsageError("delete takes one rule: --name, --pid or --older-than")
        include = {"name": tuple(args.name)} if args.name else {"pid": tuple(args.pid)} if args.pid else {}
        until = None if args.older_than is None else cutoff(args.older_than)
        args.rule = RowFilter(include=include, until=until)
    return args


def cutoff(text: str, now: float | None = None) -> int:
    """Unix seconds from an age (``30d``, ``12h``, ``90m``: that long before now) or a time."""
    from mmreid.retrieval.filters import parse_time

    age = re.fullmatch(r"(\d+(?:\.\d+)?)([dhm])", text.strip())
    if age:
        seconds = float(age.group(1)) * {"d": 86400, "h": 3600, "m": 60}[age.group(2)]
        return int((time.time() if now is None else now) - seconds)
    return parse_time(text, "--older-than")


def run(args) -> int:
    import json

    from mmreid.retrieval.store import open_gallery

    with open_gallery(args.index, args.collection) as gallery:
        if args.command == "info":
            print(json.dumps({"store": gallery.kind, "location": gallery.location, "rows": len(gallery),
                              **{k: v for k, v in gallery.info.items() if k != "num_rows"}}))
            return 0
        removed = gallery.delete(args.rule)
        print(f"deleted {removed} rows from {gallery.location}: {len(gallery)} left")
        return removed


def main(argv=None) -> int:
    return run_cli(lambda: run(parse_args(argv)), "gallery.py")


if __name__ == "__main__":
    sys.exit(main())
