"""Materialize one day in this process, configured only by the environment (for subprocess tests).

Usage: python tests/run_day.py <day> [run-config-json]

With `TEST_BARRIER=<folder>:<n>` the process waits, once imported and configured, until n processes have reached the
barrier (files in the folder), so parallel runs start their day together instead of by luck."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import dagster as dg

from sora_pipeline.definitions import DAILY_ASSETS, build_resources

def barrier(spec: str, timeout: float = 120.0) -> None:
    folder, n = spec.rsplit(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(list(Path(folder).iterdir())) < int(n):
        if time.monotonic() > deadline:
            sys.exit(f"barrier {spec}: the other processes never arrived")
        time.sleep(0.02)


if __name__ == "__main__":
    day = sys.argv[1]
    resources = build_resources()
    if os.environ.get("TEST_BARRIER"):
        barrier(os.environ["TEST_BARRIER"])
    run_config = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    result = dg.materialize(DAILY_ASSETS, partition_key=day, resources=resources,
                            run_config={"ops": {"generations": {"config": run_config}}} if run_config else None,
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    sys.exit(0 if result.success else 1)
