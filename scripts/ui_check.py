"""`make ui-check`: the Dagster UI, verified in a real (headless) browser.

1. Materializes the sample catalog like `make demo` (`python -m sora_pipeline.demo`; embedded simulator: FAL_KEY
   and every SORA_* variable are removed from the environment, nothing is billed) into a temporary DAGSTER_HOME
   and warehouse. Without `data/catalog/`, a small catalog is built with `tests/support/fixtures.py`.
2. Starts the UI like `make ui` (`scripts/run_ui.py`: `dagster dev` in its own process group) on 127.0.0.1 on a
   free port against that instance.
3. Opens, in headless Chromium (`/usr/bin/chromium`, driven by playwright — no browser download): the global asset
   graph; the `video_metadata` overview with its columns; its partitions and one day's materialization metadata;
   its checks; the `generation_summary` materialization's Markdown with its chart. It checks that each shows what
   it should (waiting for the page, never sleeping a fixed time) and saves screenshots (default `.ui-check/`;
   `make ui-check DOCS=1` writes the ones docs/ and the README use).
4. Stops the UI (SIGTERM to the wrapper, which stops the whole group) and removes the temporary directory.

When a check fails or a page does not show what is waited for, the report names it, saves the page as
`failure-<n>-<step>.png` in the output folder and prints the page's visible text.

    .venv/bin/python scripts/ui_check.py [--out .ui-check] [--catalog data/catalog] [--keep]

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
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
CHECKS = ("video_dimensions_match_request", "frame_count_consistent", "duration_matches_request", "item_id_unique")
GRAPH_ASSETS = ("catalog_items", "rejected_items", "generations", "failed_generations", "video_metadata",
                "generation_daily_stats", "generation_summary")
WAIT_MS = 90_000  # per page condition: generous, the machine may be busy
PAGE_TEXT_CHARS = 4000


class Report:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.lines: list[str] = []
        self.failures: list[str] = []
        self.details: list[str] = []
        self.page = None  # the page a failure is shown from
        self.step = "setup"

    def _print(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def check(self, ok: bool, what: str) -> bool:
        self._print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)
            self.show_page(what)
        return ok

    def note(self, what: str) -> None:
        self._print(f"  {what}")

    def show_page(self, why: str) -> None:
        """Save the page as a screenshot and print its visible text (what the user would have seen)."""
        if self.page is None:
            return
        shot = self.out / f"failure-{len(self.details) + 1}-{self.step}.png"
        block = [f"  ---- {self.step}: {why}", f"    url: {_safe(lambda: self.page.url)}"]
        try:
            self.page.screenshot(path=str(shot), full_page=True, timeout=30_000)
            block.append(f"    screenshot: {shot}")
        except Exception as exc:  # the page may be gone: still report its text
            block.append(f"    screenshot failed: {type(exc).__name__}: {exc}")
        text = _safe(lambda: self.page.inner_text("body", timeout=10_000)) or ""
        text = re.sub(r"\n\s*\n+", "\n", text).strip()
        block.append(f"    visible text ({len(text)} chars{', first ' + str(PAGE_TEXT_CHARS) if len(text) > PAGE_TEXT_CHARS else ''}):")
        block.extend("    | " + line for line in text[:PAGE_TEXT_CHARS].splitlines())
        self.details.append("\n".join(block))
        print(self.details[-1], flush=True)


def _safe(fn):
    try:
        return fn()
    except Exception as exc:
        return f"<{type(exc).__name__}: {exc}>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def catalog_days(catalog: str) -> list[str]:
    """The distinct `scheduled_date`s of a local catalog (one file, a folder, or hive folders)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(catalog, format="parquet", partitioning="hive")
    column = dataset.to_table(columns=["scheduled_date"]).column("scheduled_date")
    values = pc.unique(column.cast("string") if column.type != "string" else column).to_pylist()
    return sorted({str(v)[:10] for v in values if v})


def prepare(tmp: Path, catalog: str | None) -> tuple[dict, list[str]]:
    """Environment for the demo and the UI, and the catalog's days."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_"))}
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    if catalog is None:
        sample = ROOT / "data" / "catalog"
        if sample.exists() and any(sample.glob("*.parquet")):
            catalog = str(sample)
        else:
            sys.path.insert(0, str(ROOT))
            from tests.support.fixtures import catalog_rows, make_project

            rows = catalog_rows(n=4) + catalog_rows(day="2026-11-21", n=2, prefix="b")
            catalog = make_project(tmp / "sample", rows)["catalog_uri"]
    env.update(DAGSTER_HOME=str(home), SORA_CATALOG_URI=str(Path(catalog).resolve()),
               SORA_WAREHOUSE_URI=str(tmp / "warehouse"), SORA_POLL_INTERVAL="0.2", PYTHONUNBUFFERED="1")
    return env, catalog_days(catalog)


def run_demo(env: dict, report: Report) -> bool:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sora_pipeline.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    report.note(f"demo materialization: exit {proc.returncode} in {time.monotonic() - started:.0f}s")
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    return report.check(proc.returncode == 0, "demo materialized every catalog day and the summary")


def table_columns(warehouse: Path, table: str) -> list[str]:
    """The columns of a materialized table, from its Parquet files (the hive `date` folder is no column)."""
    import pyarrow.parquet as pq

    files = sorted((warehouse / table).glob("date=*/*.parquet"))
    return pq.read_schema(files[-1]).names if files else []


def start_ui(env: dict, port: int, log_path: Path) -> subprocess.Popen:
    """`make ui`'s wrapper: dagster dev in its own process group; SIGTERM to the wrapper stops all of it."""
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_ui.py"), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_ui(proc: subprocess.Popen) -> None:
    descendants = []
    try:
        import psutil

        descendants = psutil.Process(proc.pid).children(recursive=True)
    except Exception:
        pass
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for child in descendants:  # only if the wrapper could not stop them
        try:
            if child.is_running():
                child.kill()
        except Exception:
            pass


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


# -- waiting for what the page shows ----------------------------------------------------------------------------

def wait_text(page, pattern: str, *, count: int = 1, timeout: int | None = None) -> bool:
    """Wait until the page's visible text matches the regex `pattern` at least `count` times."""
    try:
        page.wait_for_function(
            "([p, n]) => (((document.body && document.body.innerText) || '').match(new RegExp(p, 'g')) || []).length >= n",
            arg=[pattern, count], timeout=timeout or WAIT_MS, polling=250)
        return True
    except Exception:
        return False


def wait_all(page, words, timeout: int | None = None) -> list[str]:
    """Wait until every word is on the page; returns the ones still missing at the deadline."""
    words = list(words)
    try:
        page.wait_for_function(
            "ws => { const t = (document.body && document.body.innerText) || ''; return ws.every(w => t.includes(w)); }",
            arg=words, timeout=timeout or WAIT_MS, polling=250)
        return []
    except Exception:
        text = page.inner_text("body")
        return [w for w in words if w not in text]


def quiet(page) -> None:
    """Let the page finish loading data (bounded; the conditions that matter are waited for explicitly)."""
    try:
        page.wait_for_load_state("networkidle", timeout=15_000)
    except Exception:
        pass


def browse(base: str, out: Path, days: list[str], columns: list[str], report: Report) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            ctx = browser.new_context(viewport={"width": 2000, "height": 1250})
            ctx.set_default_timeout(WAIT_MS)  # every locator wait, click and navigation
            # skip the "join the community" dialog shown on a fresh browser profile
            ctx.add_init_script("window.localStorage.setItem('communityNux', '\"1\"');")
            page = ctx.new_page()
            report.page = page
            for name, step in (("graph", lambda: graph(page, base, out, report)),
                               ("overview", lambda: overview(page, base, out, days, columns, report)),
                               ("partitions", lambda: partitions(page, base, out, days, report)),
                               ("checks", lambda: checks(page, base, out, report)),
                               ("summary", lambda: summary_markdown(page, base, out, report))):
                report.step = name
                try:
                    step()
                except Exception as exc:
                    report.check(False, f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        finally:
            report.page = None
            browser.close()


def graph(page, base: str, out: Path, report: Report) -> None:
    groups = ",".join(f"global@global:{g}" for g in ("catalog", "generation", "analytics"))
    page.goto(f"{base}/asset-groups?expanded={groups}")
    missing = wait_all(page, GRAPH_ASSETS)
    for key in GRAPH_ASSETS:
        report.check(key not in missing, f"asset graph shows {key}")
    quiet(page)
    page.get_by_role("button", name="panel_show_right", exact=True).click()  # hide the asset tree
    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_role("button", name="zoom_in").click()  # zoom in far enough for the detailed node cards
    wait_text(page, r"\d+ partitions", count=6)
    wait_text(page, r"4\s*/\s*4 Passed")
    text = page.inner_text("body")
    parts = re.findall(r"(\d+) partitions", text)
    report.check(len(parts) >= 6, f"asset graph shows partition counts on the daily assets ({parts[:1]} partitions)")
    report.check(bool(re.search(r"4\s*/\s*4 Passed", text)), "asset graph shows video_metadata's checks 4 / 4 Passed")
    quiet(page)
    page.screenshot(path=str(out / "asset-graph.png"))
    report.note(f"saved {out / 'asset-graph.png'}")


def overview(page, base: str, out: Path, days: list[str], columns: list[str], report: Report) -> None:
    page.goto(f"{base}/assets/video_metadata")
    page.get_by_text("Latest materialization").first.wait_for()
    wait_text(page, re.escape(days[-1]))
    text = page.inner_text("body")
    report.check("video_metadata" in text and days[-1] in text,
                 f"video_metadata overview shows the latest materialized partition {days[-1]}")
    report.check(bool(columns), f"video_metadata has columns in its Parquet files ({len(columns)})")
    missing = wait_all(page, ["Columns", *columns])
    lines = {line.strip() for line in page.inner_text("body").splitlines()}
    missing = [c for c in columns if c not in lines] if not missing else missing
    report.check(not missing, f"video_metadata overview lists its {len(columns)} columns"
                              + (f" (missing {missing})" if missing else ""))
    quiet(page)
    page.screenshot(path=str(out / "ui-video-metadata.png"))
    report.note(f"saved {out / 'ui-video-metadata.png'}")


def partitions(page, base: str, out: Path, days: list[str], report: Report) -> None:
    page.goto(f"{base}/assets/video_metadata?view=partitions")
    wait_text(page, rf"Materialized \({len(days)}\)")
    text = page.inner_text("body")
    m = re.search(r"Materialized \((\d+)\)", text)
    report.check(bool(m) and int(m.group(1)) == len(days),
                 f"partitions tab: Materialized ({m.group(1) if m else '?'}), expected {len(days)}")
    missing = wait_all(page, days)
    report.check(not missing, f"partitions tab lists the days {', '.join(days)}")
    total = re.search(r"(\d+) Partitions", text)
    report.note(f"partitions tab: {total.group(0) if total else '?'} in the daily partitions definition")
    page.get_by_text(days[-1], exact=True).first.click()  # show that day's materialization and metadata
    missing = wait_all(page, ["metadata_sources", "preview", "dagster/row_count"])
    report.check(not missing, f"partition {days[-1]} shows its materialization metadata (metadata_sources, "
                              "preview, row count)" + (f"; missing {missing}" if missing else ""))
    quiet(page)
    page.screenshot(path=str(out / "ui-video-metadata-partitions.png"))
    report.note(f"saved {out / 'ui-video-metadata-partitions.png'}")


def checks(page, base: str, out: Path, report: Report) -> None:
    page.goto(f"{base}/assets/video_metadata?view=checks")
    wait_text(page, re.escape(f"Checks ({len(CHECKS)})"))
    missing = wait_all(page, CHECKS)
    wait_text(page, "Succeeded", count=len(CHECKS))
    text = page.inner_text("body")
    report.check(f"Checks ({len(CHECKS)})" in text, f"checks tab shows Checks ({len(CHECKS)})")
    for name in CHECKS:
        report.check(name not in missing, f"checks tab shows {name}")
    report.check(text.count("Succeeded") >= len(CHECKS),
                 f"every check's latest execution Succeeded ({text.count('Succeeded')} of {len(CHECKS)})")
    quiet(page)
    page.screenshot(path=str(out / "ui-video-metadata-checks.png"))
    report.note(f"saved {out / 'ui-video-metadata-checks.png'}")


def summary_markdown(page, base: str, out: Path, report: Report) -> None:
    page.goto(f"{base}/assets/generation_summary?view=events")
    page.get_by_text("[Show Markdown]").first.wait_for()
    page.get_by_text("[Show Markdown]").first.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    try:  # the chart is a data-URI PNG inside the Markdown: wait until it has decoded
        page.wait_for_function(
            "() => [...document.querySelectorAll(\"[role=dialog] img[src^='data:image/png']\")]"
            ".some(i => i.complete && i.naturalWidth > 0)", timeout=WAIT_MS, polling=250)
    except Exception:
        pass
    images = dialog.locator("img[src^='data:image/png']")
    sizes = [img.evaluate("e => [e.naturalWidth, e.naturalHeight]") for img in images.all()]
    report.check(bool(sizes) and all(w > 0 and h > 0 for w, h in sizes),
                 f"generation_summary Markdown renders its chart (data-URI PNG {sizes[0] if sizes else '-'})")
    report.check("billed_cost_usd" in dialog.inner_text(), "generation_summary Markdown shows the headline table")
    page.screenshot(path=str(out / "ui-generation-summary.png"))
    report.note(f"saved {out / 'ui-generation-summary.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / ".ui-check"),
                        help="folder for the screenshots (default .ui-check/; `make ui-check DOCS=1`: docs/)")
    parser.add_argument("--catalog", default=None, help="catalog folder or file (default data/catalog, else a "
                                                        "small generated one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DAGSTER_HOME and warehouse")
    args = parser.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        print(f"ui-check: {CHROMIUM} not found; install it with `apt-get install -y chromium`", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("failure-*.png"):
        old.unlink()
    report = Report(out)
    tmp = Path(tempfile.mkdtemp(prefix="sora-ui-check-"))
    proc = None
    started_all = time.monotonic()
    try:
        env, days = prepare(tmp, args.catalog)
        print(f"ui-check: catalog {env['SORA_CATALOG_URI']} ({len(days)} days), DAGSTER_HOME {env['DAGSTER_HOME']}",
              flush=True)
        if not report.check(bool(days), "the catalog has days") or not run_demo(env, report):
            return 1
        columns = table_columns(Path(env["SORA_WAREHOUSE_URI"]), "video_metadata")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_ui(env, port, tmp / "dagster-dev.log")
        started = time.monotonic()
        if not report.check(wait_up(base, proc), f"dagster dev answers {base}/server_info"):
            print((tmp / "dagster-dev.log").read_text()[-4000:])
            return 1
        report.note(f"dagster dev up in {time.monotonic() - started:.0f}s")
        browse(base, out, days, columns, report)
    finally:
        if proc is not None:
            stop_ui(proc)
        if args.keep:
            print(f"ui-check: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if report.failures:
        print(f"ui-check: FAILED — {len(report.failures)} failure(s):")
        for what in report.failures:
            print(f"  - {what}")
        for block in report.details:
            print(block)
    print(f"ui-check: {'PASSED' if not report.failures else 'FAILED'} in {time.monotonic() - started_all:.0f}s — "
          f"{len(report.lines)} lines, {len(report.failures)} failure(s); screenshots in {out}")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
