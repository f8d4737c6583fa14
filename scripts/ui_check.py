"""`make ui-check`: the Dagster UI, verified in a real (headless) browser.

1. Materializes the sample catalog like `make demo` (embedded simulator: FAL_KEY and friends are removed from
   the environment, nothing is billed) into a temporary DAGSTER_HOME and warehouse. Without `data/catalog/`, a
   small catalog is built with `tests/pipeline_helpers.py`.
2. Starts `dagster dev` on 127.0.0.1 on a free port against that instance.
3. Opens, in headless Chromium (`/usr/bin/chromium`, driven by playwright — no browser download), the global
   asset graph, the `video_metadata` asset page (overview, partitions, checks) and the `generation_summary`
   materialization's Markdown (with its chart), checks that the assets, the partitions and the checks are shown,
   and saves screenshots (default: `docs/`).
4. Stops `dagster dev` (SIGTERM to its process group) and removes the temporary directory.

    .venv/bin/python scripts/ui_check.py [--out docs] [--catalog data/catalog] [--keep]

Exit status 0 when every check passed; the report lists what was seen.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SECRETS = ("FAL_KEY", "SORA_FAL_QUEUE_URL", "SORA_OPENAI_API_KEY", "SORA_LEDGER_URL")
CHECKS = ("video_dimensions_match_request", "frame_count_consistent", "duration_matches_request", "item_id_unique")
GRAPH_ASSETS = ("catalog_items", "rejected_items", "generations", "failed_generations", "video_metadata",
                "generation_daily_stats", "generation_summary")


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        self.lines.append(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)
        print(self.lines[-1], flush=True)
        return ok

    def note(self, what: str) -> None:
        self.lines.append(f"  {what}")
        print(self.lines[-1], flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_path(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def prepare(tmp: Path, catalog: str | None) -> tuple[dict, list[str]]:
    """Environment for the demo and the webserver, and the catalog's days."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    if catalog is None:
        sample = ROOT / "data" / "catalog"
        if sample.exists() and any(sample.glob("*.parquet")):
            catalog = str(sample)
        else:
            sys.path.insert(0, str(ROOT))
            from tests.pipeline_helpers import catalog_rows, make_project

            rows = catalog_rows(n=4) + catalog_rows(day="2026-11-21", n=2, prefix="b")
            catalog = make_project(tmp / "sample", rows)["catalog_uri"]
    sys.path.insert(0, str(ROOT))
    from sora_pipeline.catalog import catalog_fingerprints

    days = sorted(catalog_fingerprints(catalog))
    env.update(DAGSTER_HOME=str(home), SORA_CATALOG_URI=catalog, SORA_WAREHOUSE_URI=str(tmp / "warehouse"),
               SORA_POLL_INTERVAL="0.2", PYTHONUNBUFFERED="1")
    return env, days


def run_demo(env: dict, report: Report) -> bool:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sora_pipeline.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    report.note(f"demo materialization: exit {proc.returncode} in {time.monotonic() - started:.0f}s")
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    return report.check(proc.returncode == 0, "demo materialized every catalog day and the summary")


def start_dagster(env: dict, port: int, log_path: Path) -> subprocess.Popen:
    # SIGINT reset to default and a new session: SIGTERM to the group then stops it cleanly (STACK-FACTS.md)
    log = open(log_path, "w")
    return subprocess.Popen(
        [bin_path("dagster"), "dev", "-m", "sora_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_dagster(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_up(base: str, proc: subprocess.Popen, timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def browse(base: str, out: Path, days: list[str], report: Report) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            ctx = browser.new_context(viewport={"width": 2000, "height": 1250})
            ctx.set_default_timeout(60_000)
            # skip the "join the community" dialog shown on a fresh browser profile
            ctx.add_init_script("window.localStorage.setItem('communityNux', '\"1\"');")
            page = ctx.new_page()
            graph(page, base, out, report)
            page.set_viewport_size({"width": 1600, "height": 1000})
            asset_page(page, base, out, days, report)
            summary_markdown(page, base, out, report)
        finally:
            browser.close()


def _settle(page, ms: int = 1500) -> None:
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(ms)


def graph(page, base: str, out: Path, report: Report) -> None:
    groups = ",".join(f"global@global:{g}" for g in ("catalog", "generation", "analytics"))
    page.goto(f"{base}/asset-groups?expanded={groups}")
    page.get_by_text("video_metadata").first.wait_for()
    _settle(page)
    page.get_by_role("button", name="panel_show_right", exact=True).click()  # hide the asset tree
    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_role("button", name="zoom_in").click()  # zoom in far enough for the detailed node cards
    _settle(page, 2000)
    text = page.inner_text("body")
    for key in GRAPH_ASSETS:
        report.check(key in text, f"asset graph shows {key}")
    parts = re.findall(r"(\d+) partitions", text)
    report.check(len(parts) >= 6, f"asset graph shows partition counts on the daily assets ({parts[:1]} partitions)")
    report.check(bool(re.search(r"4\s*/\s*4 Passed", text)), "asset graph shows video_metadata's checks 4 / 4 Passed")
    page.screenshot(path=str(out / "asset-graph.png"))
    report.note(f"saved {out / 'asset-graph.png'}")


def asset_page(page, base: str, out: Path, days: list[str], report: Report) -> None:
    page.goto(f"{base}/assets/video_metadata")
    page.get_by_text("Latest materialization").first.wait_for()
    _settle(page)
    text = page.inner_text("body")
    report.check("video_metadata" in text and days[-1] in text,
                 f"video_metadata overview shows the latest materialized partition {days[-1]}")
    page.screenshot(path=str(out / "ui-video-metadata.png"))
    report.note(f"saved {out / 'ui-video-metadata.png'}")

    page.goto(f"{base}/assets/video_metadata?view=partitions")
    page.get_by_text(re.compile(r"Materialized \(\d+\)")).first.wait_for()
    _settle(page)
    text = page.inner_text("body")
    m = re.search(r"Materialized \((\d+)\)", text)
    report.check(bool(m) and int(m.group(1)) == len(days),
                 f"partitions tab: Materialized ({m.group(1) if m else '?'}), expected {len(days)}")
    report.check(all(d in text for d in days), f"partitions tab lists the days {', '.join(days)}")
    total = re.search(r"(\d+) Partitions", text)
    report.note(f"partitions tab: {total.group(0) if total else '?'} in the daily partitions definition")
    page.get_by_text(days[-1], exact=True).first.click()  # show that day's materialization and metadata
    page.get_by_text("metadata_sources").first.wait_for()
    _settle(page, 1000)
    report.check("preview" in page.inner_text("body"), f"partition {days[-1]} shows its materialization metadata")
    page.screenshot(path=str(out / "ui-video-metadata-partitions.png"))
    report.note(f"saved {out / 'ui-video-metadata-partitions.png'}")

    page.goto(f"{base}/assets/video_metadata?view=checks")
    page.get_by_text("Checks (").first.wait_for()
    _settle(page)
    text = page.inner_text("body")
    report.check(f"Checks ({len(CHECKS)})" in text, f"checks tab shows Checks ({len(CHECKS)})")
    for name in CHECKS:
        report.check(name in text, f"checks tab shows {name}")
    report.check(text.count("Succeeded") >= len(CHECKS), "every check's latest execution Succeeded")
    page.screenshot(path=str(out / "ui-video-metadata-checks.png"))
    report.note(f"saved {out / 'ui-video-metadata-checks.png'}")


def summary_markdown(page, base: str, out: Path, report: Report) -> None:
    page.goto(f"{base}/assets/generation_summary?view=events")
    page.get_by_text("[Show Markdown]").first.wait_for()
    _settle(page, 500)
    page.get_by_text("[Show Markdown]").first.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    page.wait_for_timeout(1000)
    images = dialog.locator("img[src^='data:image/png']")
    sizes = [img.evaluate("e => [e.naturalWidth, e.naturalHeight]") for img in images.all()]
    report.check(bool(sizes) and all(w > 0 and h > 0 for w, h in sizes),
                 f"generation_summary Markdown renders its chart (data-URI PNG {sizes[0] if sizes else '-'})")
    report.check("actual_cost_usd" in dialog.inner_text(), "generation_summary Markdown shows the headline table")
    page.screenshot(path=str(out / "ui-generation-summary.png"))
    report.note(f"saved {out / 'ui-generation-summary.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the screenshots (default docs/)")
    parser.add_argument("--catalog", default=None, help="catalog URI (default data/catalog, else a small one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DAGSTER_HOME and warehouse")
    args = parser.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        print(f"ui-check: {CHROMIUM} not found; install it with `apt-get install -y chromium`", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="sora-ui-check-"))
    proc = None
    try:
        env, days = prepare(tmp, args.catalog)
        print(f"ui-check: catalog {env['SORA_CATALOG_URI']} ({len(days)} days), DAGSTER_HOME {env['DAGSTER_HOME']}",
              flush=True)
        if not days or not run_demo(env, report):
            return 1
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_dagster(env, port, tmp / "dagster-dev.log")
        started = time.monotonic()
        if not report.check(wait_up(base, proc), f"dagster dev answers {base}/server_info"):
            print((tmp / "dagster-dev.log").read_text()[-4000:])
            return 1
        report.note(f"dagster dev up in {time.monotonic() - started:.0f}s")
        browse(base, out, days, report)
    finally:
        if proc is not None:
            stop_dagster(proc)
        if args.keep:
            print(f"ui-check: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"ui-check: {'PASSED' if not report.failures else 'FAILED'} — {len(report.lines)} lines, "
          f"{len(report.failures)} failure(s); screenshots in {out}")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
