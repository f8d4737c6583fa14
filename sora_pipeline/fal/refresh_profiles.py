"""`python -m sora_pipeline.endpoints refresh --all` runs this (the endpoints layer does not import `fal`): every
endpoint profile refreshed from fal's platform API through `PlatformClient` (`sora_pipeline.endpoints.refresh_all`).
Options as `refresh`'s: --api-url, --profiles-dir, --dry-run, --no-price, --accept-price-drop, --timeout."""

from __future__ import annotations

import argparse
import os
import sys

from sora_pipeline.endpoints.price_check import ACCEPT_FLAG
from sora_pipeline.endpoints.refresh import API_BASE, RefreshError
from sora_pipeline.endpoints.refresh_all import refresh_all
from sora_pipeline.fal.platform import PlatformClient, PlatformError


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m sora_pipeline.endpoints refresh --all",
                                  description="Refresh every endpoint profile from fal's registry and price API.")
    top.add_argument("--all", action="store_true", help="(implied)")
    top.add_argument("--api-url", default=API_BASE, metavar="BASE")
    top.add_argument("--profiles-dir")
    top.add_argument("--dry-run", action="store_true")
    top.add_argument("--write", dest="dry_run", action="store_false")
    top.add_argument("--no-price", action="store_true")
    top.add_argument(ACCEPT_FLAG, action="store_true")
    top.add_argument("--timeout", type=float, default=30.0)
    args = top.parse_args(argv)
    try:
        return refresh_all(api_base=args.api_url, profiles_dir=args.profiles_dir, dry_run=args.dry_run,
                           fal_key=os.environ.get("FAL_KEY") or None, price=not args.no_price,
                           timeout=args.timeout, accept_price_drop=args.accept_price_drop,
                           client_factory=PlatformClient, client_errors=(PlatformError, ValueError))
    except RefreshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
