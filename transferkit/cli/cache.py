"""`transferkit cache info|clear`: what the feature cache holds, and emptying it."""

from __future__ import annotations

import argparse
import json

from .options import MAIN, add_fields, add_shared, command_parser


def _parser() -> argparse.ArgumentParser:
    p = command_parser("cache", "The on-disk cache of frozen features (used by train's head-only phases, "
                       "compare, rank, embed, knn and cluster).",
                       ["transferkit cache info", "transferkit cache clear --cache-dir /scratch/tk-cache --json"])
    p.add_argument("action", choices=["info", "clear"],
                   help="info: feature spaces, rows and bytes held; clear: delete the feature spaces transferkit wrote "
                        "(anything else under CACHE_DIR/features/ is left and named)")
    add_fields(p, ["cache_dir"], title=MAIN)
    add_shared(p, "--json")
    return p


def main(argv: list[str]) -> int:
    a = _parser().parse_args(argv[1:])
    from ..data.feature_cache import FeatureCache
    cache = FeatureCache(a.cache_dir)
    if a.action == "clear":
        r = cache.clear()
        if a.json:
            print(json.dumps({"root": str(cache.root), **r}))
            return 0
        print(f"cleared {r['freed_bytes'] / 1e6:.1f} MB of cached features ({r['removed']} feature spaces) "
              f"under {cache.root}")
        if r["kept"]:
            shown = ", ".join(r["kept"][:5]) + (f" and {len(r['kept']) - 5} more" if len(r["kept"]) > 5 else "")
            print(f"left {len(r['kept'])} entries transferkit did not write: {shown}")
        return 0
    info = cache.info()
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['root']}: {len(info['spaces'])} feature spaces, {info['bytes'] / 1e6:.1f} MB")
    for s in info["spaces"]:
        print(f"  {s['namespace']}  {s['rows']:>7} rows  {s['bytes'] / 1e6:8.1f} MB  {s['preprocess']}/{s['view']}  "
              f"weights {s['weights']}")
    return 0


PARSERS = {"cache": _parser}
