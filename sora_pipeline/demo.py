"""`make demo`: materialize every day of the catalog on the embedded simulator (always: the demo never bills; it
ignores FAL_KEY and SORA_FAL_QUEUE_URL), then the `generation_summary` rollup, and print short tables — the
videos (`video_metadata`), the days, the totals — and where the files are. While a day generates, a progress line
about every 10 s. Dagster's own log lines are silenced (the run logs are in the Dagster instance when DAGSTER_HOME
is set: `make ui` shows them)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter

import dagster as dg

#: variables that would send the demo to fal (and bill): the demo drops them from its own environment, before the
#: settings (`load_settings`, the one reader of the environment) read it
SPENDING_VARIABLES = ("FAL_KEY", "SORA_FAL_QUEUE_URL", "FAL_ADMIN_KEY", "SORA_FAL_API_URL")
PROGRESS_LOGGER = "sora_pipeline.progress"  # the generations step's progress lines (printed by the demo)
SUMMARY_KEY = "generation_summary"
# Dagster's console logger says nothing; the run's full log stays in the instance's event log
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # the demo prints failures itself
#: what a generations row's `decision` says this run did with the item, in the order the demo reports them
DECISIONS = ("submitted", "reused", "resumed")
FAILED = ("failed", "unknown")  # statuses counted as failed
SHOWN = 20  # rejected or failed rows listed one per line at most (the tables hold every one)


def _quiet_python_logging() -> None:
    logging.basicConfig(level=logging.WARNING)
    for name in ("dagster", "sora_pipeline", "httpx", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.ERROR)
    progress = logging.getLogger(PROGRESS_LOGGER)  # except the step's progress lines: one short line each
    progress.setLevel(logging.INFO)
    progress.propagate = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("    %(message)s"))
    progress.addHandler(handler)


def _simulator_only() -> str | None:
    """Drop the variables that would make the demo spend money; return the one line that says so, or None."""
    dropped = [name for name in SPENDING_VARIABLES if os.environ.pop(name, None) is not None]
    if not dropped:
        return None
    return (f"  (ignored {', '.join(dropped)}: the demo always runs on the embedded simulator and bills nothing; "
            "`dg launch` or `dagster asset materialize` run for real — see README)")


def _failure(result) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.event_specific_data
            failure = getattr(data, "user_failure_data", None)
            if failure is not None and failure.description:  # a dagster.Failure: its one-line description
                return f"step {event.step_key}: {failure.description.strip()}"
            error = data.error
            return f"step {event.step_key}: {error.message.strip().splitlines()[-1] if error else 'failed'}"
    return "run failed"


def _interrupted(result) -> bool:
    return any(e.event_type_value == "STEP_FAILURE" and e.event_specific_data.error is not None
               and "DagsterExecutionInterruptedError" in e.event_specific_data.error.cls_name
               for e in result.all_events)


def _table(header: tuple[str, ...], lines: list[tuple[str, ...]], right: set[int] = frozenset()) -> list[str]:
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]

    def row(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [row(header).rstrip(), row(tuple("-" * w for w in widths)), *(row(line).rstrip() for line in lines)]


def day_activity(warehouse, day: str) -> tuple[Counter, float]:
    """What the day's run did — items by decision (submitted / reused / resumed / …) and by status — and what
    the requests it submitted cost (fal's price; on the simulator what fal would have charged)."""
    table = warehouse.read("generations", day)
    rows = [] if table is None else table.select(["decision", "status", "priced_cost", "estimated_cost"]).to_pylist()
    counts: Counter = Counter()
    cost = 0.0
    for row in rows:
        counts[row["decision"]] += 1
        if row["status"] in FAILED:
            counts["status:failed"] += 1
        if row["decision"] == "submitted":
            cost += row["priced_cost"] if row["priced_cost"] is not None else (row["estimated_cost"] or 0.0)
    return counts, cost


def activity_text(counts: Counter, cost: float, backend: str, seconds: float) -> str:
    """`4 items: 4 submitted, 0 reused, 0 resumed, 0 failed in 6.3s; would-be cost $7.60` (the cost of what was
    submitted)"""
    items = sum(n for k, n in counts.items() if not k.startswith("status:"))
    text = f"{items} items: " + ", ".join(f"{counts.get(d, 0)} {d}" for d in DECISIONS) + f", {counts.get('status:failed', 0)} failed"
    skipped = counts.get("skipped", 0)
    if skipped:
        text += f", {skipped} skipped"
    return text + f" in {seconds:.1f}s; " + (f"cost ${cost:,.2f}" if backend == "fal" else
                                             f"would-be cost ${cost:,.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sora_pipeline.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulator-latency", type=float, default=None, metavar="SECONDS",
                        help="seconds the embedded simulator takes per video (default 1)")
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                        help="a progress line while a day generates, at most this often (default 10)")
    args = parser.parse_args(argv)
    ignored = _simulator_only()  # before the code location reads the environment
    _quiet_python_logging()
    # the code location first: it filters Dagster's Beta/Preview warnings before the assets are imported, and makes
    # a configuration mistake one line (`error: …`) instead of a traceback
    from sora_pipeline.definitions import ASSETS, CHECKS, build_resources
    from sora_pipeline.defs.automation import daily_generation_job, summary_job
    from sora_pipeline.catalog import CatalogError, catalog_fingerprints
    from sora_pipeline.defs.assets.catalog import catalog_problem
    from sora_pipeline.defs.partitions import partition_problem, partition_range
    from sora_pipeline.defs.settings import ConfigError, load_settings

    try:
        settings = load_settings()  # the code location's: read once, above
        settings.check_catalog()
        days = sorted(catalog_fingerprints(settings.catalog_uri))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CatalogError as exc:
        print(f"error: {catalog_problem(exc)}", file=sys.stderr)
        return 2
    first, last = partition_range()
    early = [d for d in days if d < first]
    if early:  # nothing is run (or paid) for a catalog the partitions do not cover
        print(f"error: catalog day {partition_problem(early[0])}"
              + (f" ({len(early)} catalog days are before {first})" if len(early) > 1 else ""), file=sys.stderr)
        return 2
    later = [d for d in days if d > last]
    days = [d for d in days if d <= last]
    resources = build_resources(settings, **({"simulator_run_latency": args.simulator_latency}
                                              if args.simulator_latency is not None else {}))
    assert resources["fal"].uses_embedded_simulator  # the spending variables were dropped above
    print(f"sora_pipeline demo — endpoint {settings.endpoint_id}, backend: simulator (embedded, on loopback); "
          f"catalog {settings.catalog_uri}: {len(days)} day(s) {', '.join(days)}")
    if ignored:
        print(ignored)
    if later:
        print(f"  ({len(later)} later catalog day(s) {', '.join(later[:3])}{' …' if len(later) > 3 else ''} "
              f"skipped: not a partition before they begin, UTC)")
    print("  (the embedded fal simulator generates synthetic videos; nothing is billed)")
    instance = dg.DagsterInstance.get() if settings.dagster_home else dg.DagsterInstance.ephemeral()
    run_config = {**QUIET, "ops": {"generations": {"config": {"progress_interval_seconds": args.progress_every}}}}
    # the code location's own jobs (named runs in the UI), with the demo's resources
    demo_defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[daily_generation_job, summary_job],
                               resources=resources)
    day_job = demo_defs.resolve_job_def(daily_generation_job.name)
    total: Counter = Counter()
    total_cost, begun = 0.0, time.monotonic()
    for day in days:
        started = time.monotonic()
        try:
            result = day_job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False,
                                                run_config=run_config, tags={"sora/demo": "true"})
        except KeyboardInterrupt:
            print(f"  {day}: interrupted after {time.monotonic() - started:.1f}s; run `make demo` again to resume "
                  "(a request whose cancel fal confirmed is not counted as spent)")
            return 130
        checks = [e.event_specific_data for e in result.all_events
                  if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        failed_checks = [c.check_name for c in checks if not c.passed]
        if not result.success and _interrupted(result):  # Ctrl-C: the step said what became of its requests
            print(f"  {day}: interrupted after {time.monotonic() - started:.1f}s; run `make demo` again to resume "
                  "(a request whose cancel fal confirmed is not counted as spent)")
            return 130
        if not result.success:
            print(f"  {day}: FAILED in {time.monotonic() - started:.1f}s\n    {_failure(result)}\n"
                  f"    run id {result.run_id}; full log: `make ui` → Runs")
            return 1
        counts, cost = day_activity(resources["warehouse"], day)
        total.update(counts)
        total_cost += cost
        print(f"  {day}: ok — {activity_text(counts, cost, settings.backend, time.monotonic() - started)}; "
              f"checks {len(checks) - len(failed_checks)}/{len(checks)} passed"
              + (f" (not passed: {', '.join(failed_checks)})" if failed_checks else ""))
    print(f"  all days: {activity_text(total, total_cost, settings.backend, time.monotonic() - begun)}")
    if days and not total.get("submitted") and total.get("reused"):
        print("  (nothing was submitted: the request ledger reused the videos of an earlier run)")
    result = demo_defs.resolve_job_def(summary_job.name).execute_in_process(
        instance=instance, raise_on_error=False, run_config=QUIET, tags={"sora/demo": "true"})
    if not result.success:
        print(f"  {SUMMARY_KEY}: FAILED — {_failure(result)}")
        return 1
    print_report(settings, resources["database"].resolved_url())
    return 0


def print_report(settings, ledger_url: str) -> None:
    from sqlalchemy.engine import make_url

    from sora_pipeline.analytics.query import connect, views
    from sora_pipeline.analytics.stats import totals

    con = connect(settings.warehouse_uri, empty_missing=True)
    have = set(views(con))
    videos = con.sql("SELECT * FROM video_metadata ORDER BY date, item_id").fetchall()
    cols = con.sql("SELECT * FROM video_metadata LIMIT 0").columns
    print_videos([dict(zip(cols, r)) for r in videos])
    for table, query in (
            ("rejected_items", "SELECT 'rejected ' || date || ': ' || reason FROM rejected_items "
                               "ORDER BY date, row_index"),
            ("failed_generations", "SELECT status || ' ' || date || ' ' || item_id || ': ' || reason "
                                   "FROM failed_generations ORDER BY date, item_id")):
        ((count,),) = con.execute(f"SELECT count(*) FROM {table}").fetchall()
        for (line,) in con.execute(f"{query} LIMIT {SHOWN}").fetchall():
            print(f"  {line}")
        if count > SHOWN:
            print(f"  … and {count - SHOWN:,} more in {table}")
    from sora_pipeline.catalog import catalog_dates
    from sora_pipeline.defs.partitions import partition_range

    for line in catalog_dates(settings.catalog_uri, first_day=partition_range()[0]).lines():
        print(f"  {line}")  # catalog rows no day reads: none disappears without a trace
    if SUMMARY_KEY in have:
        rel = con.sql("SELECT * FROM generation_summary ORDER BY scope DESC, day")
        rows = [dict(zip(rel.columns, r)) for r in rel.fetchall()]
        print_days(totals(rows))  # each day's and the total's whole figures (not one line per endpoint)
    base = settings.warehouse_uri.rstrip("/")
    ledger = make_url(ledger_url).render_as_string(hide_password=True)
    print(f"\nFiles\n  tables  {base}/<table>/date=YYYY-MM-DD/*.parquet\n"
          f"          (video_metadata, generations, failed_generations, rejected_items, catalog_items, "
          f"fal_billing, generation_daily_stats)\n"
          f"  rollup  {base}/generation_summary/summary.parquet (+ summary.png, summary.md)\n"
          f"  videos  {base}/videos/date=YYYY-MM-DD/*.mp4\n"
          f"  ledger  {ledger}\n"
          "Query them with DuckDB: .venv/bin/python -c \"from sora_pipeline.analytics.query import connect; "
          "connect().sql('FROM generation_summary').show()\"  (see README)")


def print_videos(rows: list[dict]) -> None:
    header = ("date", "item_id", "size", "fps", "frames", "sec", "source", "bytes")
    lines = [(str(r.get("date")), r["item_id"], f"{r['width']}x{r['height']}", f"{r['fps']:g}",
              str(r["num_frames"]), f"{r['duration']:.2f}", r["metadata_source"], f"{r['file_size']:,}")
             for r in rows]
    print(f"\nvideo_metadata: {len(rows)} video(s)")
    for line in _table(header, lines, right={3, 4, 5, 7}):
        print("  " + line)


def print_days(rows: list[dict]) -> None:
    from sora_pipeline.analytics.report import fmt

    header = ("day", "planned", "done", "failed", "rejected", "p50 latency", "p95 latency", "seconds", "est. cost",
              "billed (fal)", "resolutions")
    lines = []
    for r in rows:
        mix = json.loads(r["resolution_mix"] or "{}")
        lines.append((str(r["day"]) if r["scope"] == "day" else "all days", str(r["planned"]), str(r["completed"]),
                      str(r["failed"] + r["unknown"]), str(r["rejected"]), fmt("latency_p50_s", r["latency_p50_s"]),
                      fmt("latency_p95_s", r["latency_p95_s"]), fmt("seconds_generated", r["seconds_generated"]),
                      fmt("estimated_cost_usd", r["estimated_cost_usd"]), fmt("billed_cost_usd", r["billed_cost_usd"]),
                      " ".join(f"{k}:{v}" for k, v in mix.items()) or "–"))
    print("\ngeneration_summary (DuckDB over all days)")
    table = _table(header, lines, right=set(range(1, 10)))
    for i, line in enumerate(table):
        if i == len(table) - 1 and len(lines) > 1:
            print("  " + table[1])
        print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
