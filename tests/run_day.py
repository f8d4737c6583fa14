"""Materialize one day in this process, configured only by the environment (for subprocess tests).

Usage: python tests/run_day.py <day> [run-config-json]"""

from __future__ import annotations

import json
import sys

import dagster as dg

from sora_pipeline.definitions import DAILY_ASSETS, build_resources

if __name__ == "__main__":
    day = sys.argv[1]
    run_config = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    result = dg.materialize(DAILY_ASSETS, partition_key=day, resources=build_resources(),
                            run_config={"ops": {"generations": {"config": run_config}}} if run_config else None,
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    sys.exit(0 if result.success else 1)
