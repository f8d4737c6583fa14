"""PNG charts of the statistics (matplotlib, Agg backend), and Markdown that embeds them for the Dagster UI.

The Dagster UI renders `MetadataValue.md` with images whose `src` is a `data:` URI, so a chart is attached as
`![chart](data:image/png;base64,…)`; the same PNG is also written to the warehouse. matplotlib is imported
lazily: loading the code location does not pay for it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence

COLORS = {"completed": "#2f9e44", "failed": "#e03131", "unknown": "#f08c00", "skipped": "#868e96",
          "pending": "#1c7ed6", "rejected": "#ae3ec9"}
_DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    plt.close(fig)
    return buf.getvalue()


def _mix(value) -> dict[str, int]:
    if not value:
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def _bar_mix(ax, mix: dict[str, int], title: str) -> None:
    ax.set_title(title, fontsize=10)
    if not mix:
        ax.text(0.5, 0.5, "no videos", ha="center", va="center", transform=ax.transAxes, color="#868e96")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    keys = sorted(mix)
    ax.bar(keys, [mix[k] for k in keys], color="#1c7ed6")
    ax.set_ylabel("videos")
    ax.yaxis.get_major_locator().set_params(integer=True)


def daily_chart(row: dict) -> bytes:
    """One day: outcomes, latency (queue / run / total), and the resolution mix of the videos."""
    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(10, 2.8))
    outcomes = ("completed", "failed", "unknown", "skipped", "pending", "rejected")
    a.barh(list(outcomes), [row.get(k) or 0 for k in outcomes], color=[COLORS[k] for k in outcomes])
    a.invert_yaxis()
    a.set_title(f"{row.get('day')}: {row.get('planned', 0)} planned", fontsize=10)
    a.xaxis.get_major_locator().set_params(integer=True)
    lat = {"in queue p50": row.get("queue_p50_s"), "running p50": row.get("run_p50_s"),
           "total p50": row.get("latency_p50_s"), "total p95": row.get("latency_p95_s"),
           "total max": row.get("latency_max_s")}
    b.set_title("submit → completion (s)", fontsize=10)
    if any(v is not None for v in lat.values()):
        b.barh(list(lat), [v or 0 for v in lat.values()], color=["#adb5bd", "#adb5bd", "#495057", "#495057",
                                                                  "#495057"])
        b.invert_yaxis()
    else:
        b.text(0.5, 0.5, "no completed items", ha="center", va="center", transform=b.transAxes, color="#868e96")
    _bar_mix(c, _mix(row.get("resolution_mix")), "resolution mix")
    # fixed margins: `tight_layout` would lay the figure out (draw it) once more, tripling the cost of a chart
    # that every day's run draws
    fig.subplots_adjust(left=0.095, right=0.985, bottom=0.1, top=0.9, wspace=0.5)
    return _png(fig)


def summary_chart(day_rows: Sequence[dict], total: dict | None) -> bytes:
    """All days: daily volume by outcome, p50/p95 latency per day, and the overall resolution mix."""
    plt = _plt()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.2), gridspec_kw={"width_ratios": [2.2, 2.2, 1]})
    days = [str(r["day"]) for r in day_rows]
    x = list(range(len(days)))
    bottom = [0] * len(days)
    for key in ("completed", "failed", "unknown", "skipped", "pending", "rejected"):
        values = [r.get(key) or 0 for r in day_rows]
        if any(values):
            a.bar(x, values, bottom=bottom, color=COLORS[key], label=key)
            bottom = [p + v for p, v in zip(bottom, values)]
    a.set_title("daily volume", fontsize=10)
    a.set_ylabel("items")
    a.yaxis.get_major_locator().set_params(integer=True)
    if any(bottom):
        a.set_ylim(0, max(bottom) * 1.35)  # room for the legend
        a.legend(fontsize=7, loc="upper left", ncol=3)
    b.set_title("latency submit → completion (s)", fontsize=10)
    for key, label, style in (("latency_p50_s", "p50", "o-"), ("latency_p95_s", "p95", "s-"),
                              ("queue_p50_s", "queue p50", "^--")):
        values = [r.get(key) for r in day_rows]
        if any(v is not None for v in values):
            b.plot([i for i, v in zip(x, values) if v is not None], [v for v in values if v is not None], style,
                   label=label, markersize=4)
    if b.lines:
        b.set_ylim(0, max(max(line.get_ydata()) for line in b.lines) * 1.3 or 1)
        b.legend(fontsize=7, loc="upper left", ncol=3)
    for ax in (a, b):
        ax.set_xticks(x)
        ax.set_xticklabels(days, rotation=30 if len(days) > 3 else 0, ha="right" if len(days) > 3 else "center",
                           fontsize=8)
        if len(days) > 14:  # thin the labels on long ranges
            for i, label in enumerate(ax.get_xticklabels()):
                label.set_visible(i % max(1, len(days) // 10) == 0)
    if not days:
        for ax in (a, b):
            ax.text(0.5, 0.5, "no days yet", ha="center", va="center", transform=ax.transAxes, color="#868e96")
    _bar_mix(c, _mix((total or {}).get("resolution_mix")), "resolution mix (all days)")
    fig.tight_layout()
    return _png(fig)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_with_chart(markdown: str, png: bytes, alt: str = "chart") -> str:
    """The chart as an inline image (rendered by the Dagster UI), then `markdown`."""
    return f"![{alt}]({data_uri(png)})\n\n{markdown}\n"
