"""`python -m sora_pipeline.endpoint_tools list` prints the shipped endpoint profiles (what each maps, its
durations, resolutions and price); `python -m sora_pipeline.endpoint_tools refresh ENDPOINT_ID` refreshes one from
fal's OpenAPI document and pricing API, `refresh --all` every profile from fal's platform API (`refresh.py`;
docs/endpoints.md). Errors are one line, `error: …`, with the exit codes of `errors.py` (1 download, 2 usage,
3 bad document, 4 the profile needs a person, 5 a price drop refused). FAL_KEY is read from the environment here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sora_pipeline.endpoint_tools.errors import EXIT_USAGE, RefreshError
from sora_pipeline.endpoint_tools.fetch import API_BASE, OPENAPI_BASE
from sora_pipeline.endpoint_tools.profile_edit import parse_mapping
from sora_pipeline.endpoint_tools.refresh import refresh, refresh_all
from sora_pipeline.endpoints.price_check import ACCEPT_FLAG, price_text
from sora_pipeline.endpoints.profile import CONCEPTS
from sora_pipeline.endpoints.registry import PROFILES_DIR, read_profiles
from sora_pipeline.redact import redact


def _field(profile: dict[str, Any], concept: str) -> dict[str, Any] | None:
    name = profile.get("catalog_mapping", {}).get(concept)
    return profile.get("input", {}).get("properties", {}).get(name) if name else None


def _values(spec: dict[str, Any] | None, unit: str = "") -> str:
    if spec is None:
        return "—"
    if "enum" in spec:
        return ", ".join(f"{v}" if unit and str(v).endswith(unit.strip()) else f"{v}{unit}" for v in spec["enum"])
    low, high = spec.get("minimum"), spec.get("maximum")
    return f"{low:g}–{high:g}{unit}" if low is not None and high is not None else f"any {spec.get('type', '')}"


def table(profiles: dict[str, dict[str, Any]]) -> str:
    """The `list` table: endpoint, catalog concepts → inputs, durations, resolutions, price."""
    rows = [("endpoint", "maps (catalog → input)", "durations", "resolutions", "price")]
    for endpoint_id, p in sorted(profiles.items()):
        mapping = p.get("catalog_mapping", {})
        maps = ", ".join(c if mapping[c] == c else f"{c}→{mapping[c]}" for c in CONCEPTS if mapping.get(c))
        res = _field(p, "resolution")
        heights = p.get("video", {}).get("heights", {})
        resolutions = _values(res) if res else (f"(native {heights['*']}p)" if "*" in heights else "—")
        rows.append((endpoint_id, maps, _values(_field(p, "duration"), " s"), resolutions,
                     price_text(p.get("pricing", {}))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m sora_pipeline.endpoint_tools",
                                  description="fal endpoint profiles: list them, refresh one from fal.")
    sub = top.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="the table of endpoint profiles")
    ls.add_argument("--profiles-dir", help=f"a folder of profiles (default: the shipped {PROFILES_DIR})")
    rf = sub.add_parser("refresh", help="refresh one profile from fal's OpenAPI document and price",
                        description="Downloads the endpoint's queue OpenAPI document (no auth) and its price "
                                    "(with FAL_KEY from the environment, sent only to --api-url), rewrites the "
                                    "profile (keeping catalog_mapping, video and sources) and prints the diff.")
    rf.add_argument("endpoint_id", nargs="?", help="e.g. fal-ai/sora-2/image-to-video (or --all)")
    rf.add_argument("--all", action="store_true",
                    help="every profile (the shipped ones and --profiles-dir's), from fal's model registry and "
                         "pricing API (not with ENDPOINT_ID, --openapi-url or --mapping)")
    rf.add_argument("--openapi-url", metavar="BASE",
                    help=f"where the OpenAPI documents are (default {OPENAPI_BASE})")
    rf.add_argument("--api-url", default=API_BASE, metavar="BASE",
                    help=f"fal's platform API, the only origin FAL_KEY is sent to (default {API_BASE})")
    mode = rf.add_mutually_exclusive_group()
    mode.add_argument("--write", dest="dry_run", action="store_false", help="write the profile (default)")
    mode.add_argument("--dry-run", dest="dry_run", action="store_true", help="show the diff, write nothing")
    rf.set_defaults(dry_run=False)
    rf.add_argument("--profiles-dir", help=f"write here instead of the shipped {PROFILES_DIR} (read from here "
                                           "first, then from the shipped folder)")
    rf.add_argument("--mapping", action="append", metavar="CONCEPT=FIELD[,…]",
                    help=f"catalog concept → endpoint input ({', '.join(CONCEPTS)}; 'none' for no such input); "
                         "required for a new endpoint, overrides the profile's otherwise")
    rf.add_argument("--no-price", action="store_true", help="do not ask fal's pricing API (keep the price)")
    rf.add_argument(ACCEPT_FLAG, action="store_true",
                    help="write a price of zero, or one that makes a video more than half cheaper (refused "
                         "otherwise: budgets trust the profile's price)")
    rf.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    fal_key = os.environ.get("FAL_KEY") or None
    try:
        if args.command == "list":
            folder = Path(args.profiles_dir) if args.profiles_dir else PROFILES_DIR
            if not folder.is_dir():
                raise RefreshError(f"{folder} is not a folder", EXIT_USAGE)
            print(redact(table(read_profiles(folder))))
            return 0
        if args.all:
            if args.endpoint_id or args.openapi_url or args.mapping:
                raise RefreshError("refresh --all takes no ENDPOINT_ID, --openapi-url or --mapping", EXIT_USAGE)
            return refresh_all(api_base=args.api_url, profiles_dir=args.profiles_dir, dry_run=args.dry_run,
                               fal_key=fal_key, price=not args.no_price, timeout=args.timeout,
                               accept_price_drop=args.accept_price_drop)
        if not args.endpoint_id:
            raise RefreshError("refresh needs an ENDPOINT_ID (or --all)", EXIT_USAGE)
        return refresh(args.endpoint_id, openapi_base=args.openapi_url or OPENAPI_BASE, api_base=args.api_url,
                       profiles_dir=args.profiles_dir, dry_run=args.dry_run, mapping=parse_mapping(args.mapping),
                       fal_key=fal_key, price=not args.no_price, timeout=args.timeout,
                       accept_price_drop=args.accept_price_drop)
    except RefreshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except (OSError, ValueError) as exc:  # an unreadable or broken profile file
        print(f"error: {redact(str(exc))[:300]}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
