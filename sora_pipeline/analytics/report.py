"""The statistics for people: formatted values and the Markdown tables of the materializations and `summary.md`
(the headline of a row, one line per day, one line per endpoint from the `endpoint_comparison` view)."""

from __future__ import annotations

import json

from sora_pipeline.analytics.stats import HEADLINE


def fmt(name: str, value) -> str:
    """A metric value for people: money with $, seconds with s, rates as %, sizes in MB."""
    if value is None:
        return "–"
    if name.endswith("_usd"):
        return f"${value:,.2f}"
    if name.endswith("_s"):
        return f"{value:,.1f} s"
    if name == "success_rate":
        return f"{value:.0%}"
    if name == "seconds_generated":
        return f"{value:,.0f} s"
    if "file_size" in name:
        return f"{value / 1e6:,.2f} MB"
    if name.endswith(("_mix", "_by_type", "_by_reason", "_by_field")):
        data = json.loads(value) if isinstance(value, str) else value
        return ", ".join(f"{k}: {v}" for k, v in data.items()) or "–"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def headline_markdown(row: dict, names: tuple[str, ...] = HEADLINE + ("failed_by_type", "rejected_by_field",
                                                                       "resolution_mix")) -> str:
    """A two-column Markdown table of one stats row."""
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {n} | {fmt(n, row.get(n))} |" for n in names)


def days_markdown(rows: list[dict], key: str = "day") -> str:
    """One line per row, named by its `key` column: the days' total rows, or one day's endpoint rows."""
    cols = ("planned", "completed", "failed", "rejected", "latency_p50_s", "latency_p95_s", "seconds_generated",
            "estimated_cost_usd", "billed_cost_usd")
    head = f"| {key} | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    return head + "\n".join(f"| {r[key]} | " + " | ".join(fmt(c, r.get(c)) for c in cols) + " |" for r in rows)


ENDPOINT_COLUMNS = (("videos", "videos"), ("success", "success_rate"), ("failed", "failed"),
                    ("content policy", "content_policy"), ("timeouts", "timeouts"), ("p50", "latency_p50_s"),
                    ("p95", "latency_p95_s"), ("est. $/video-s", "estimated_usd_per_video_second"),
                    ("billed $/video-s", "billed_usd_per_video_second"), ("probed sizes", "probed_sizes"),
                    ("probed fps", "probed_fps"))


def endpoints_markdown(rows: list[dict]) -> str:
    """One line per endpoint: rows of `sora_pipeline.analytics.query.endpoint_comparison_for`."""

    def cell(name: str, value) -> str:
        if value is None:
            return "–"
        if name.endswith("_per_video_second"):
            return f"${value:,.4f}"
        if name.startswith("probed_"):
            return fmt("_mix", value)
        return fmt(name, value)

    head = "| endpoint | " + " | ".join(label for label, _ in ENDPOINT_COLUMNS) + " |\n|---|" + \
        "---|" * len(ENDPOINT_COLUMNS) + "\n"
    return head + "\n".join(f"| `{r['endpoint_id']}` | " + " | ".join(cell(c, r.get(c)) for _, c in ENDPOINT_COLUMNS)
                             + " |" for r in rows)
