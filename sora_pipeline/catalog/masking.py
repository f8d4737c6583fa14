"""How a catalog value appears in a reason or a rejected row: credentials masked, long opaque tokens hidden, long
values shortened (`mask_value`, `show_value`, `shown_row`), reasons on one line (`ONE_LINE`). Not the log
redactor of secrets the pipeline knows (`sora_pipeline.redact`): this masks what merely looks like one."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from sora_pipeline.catalog.columns import CONTRACT_COLUMNS

ONE_LINE = re.compile(r"[\r\n\t]+")
_SECRET_PATTERNS = [
    (re.compile(r"(?<=://)[^/@\s]+@"), "***@"),  # user:password@host
    (re.compile(r"([?&][^=&#\s]*(?:key|token|secret|sig|signature|password|passwd|credential|auth)[^=&#\s]*=)"
                r"[^&#\s]*", re.I), r"\1***"),
    (re.compile(r"\b(Key|Bearer|Basic)\s+\S+"), r"\1 ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9a-f]{16,}\b", re.I), "***"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "***"),
]
# a cheap first look: text without any of these cannot match a pattern above
_MAYBE_SECRET = re.compile(r"://|[?&]|Key|Bearer|Basic|sk-|:[0-9a-fA-F]{16}|AKIA|ASIA")
# long opaque tokens (letters and digits, 40+ chars): masked everywhere except in item_id, the row's name
_OPAQUE = re.compile(r"(?<![A-Za-z0-9_])(?=[A-Za-z0-9_]*\d)(?=[A-Za-z0-9_]*[A-Za-z])[A-Za-z0-9_]{40,}")


def mask_value(text: str, limit: int = 200, *, opaque: bool = True) -> str:
    """A catalog value as it may be shown: things that look like credentials masked, long values shortened (data
    URIs keep only their header)."""
    if text.startswith("data:") and "," in text:
        head, payload = text.split(",", 1)
        return f"{head[:80]},<{len(payload)} chars>"
    if _MAYBE_SECRET.search(text):
        for pattern, repl in _SECRET_PATTERNS:
            text = pattern.sub(repl, text)
    if opaque:
        text = _OPAQUE.sub("***", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show_value(value: Any, *, opaque: bool = True) -> str:
    """A cell as a reason quotes it: masked, at most 80 characters."""
    if isinstance(value, str):
        return repr(mask_value(value, 80, opaque=opaque))
    return mask_value(repr(value), 80, opaque=opaque)


def shown_row(row: dict[str, Any]) -> dict[str, str | None]:
    """A rejected row's contract columns as text, masked (item_id keeps its long tokens: it names the row)."""
    out: dict[str, str | None] = {}
    for col in CONTRACT_COLUMNS:
        value = row.get(col)
        if col in ("params", "end_image_uri", "endpoint_id") and value is None:  # optional and rare: shown when set
            continue
        text = value.isoformat() if isinstance(value, date) else str(value)
        out[col] = None if value is None else mask_value(text, opaque=col != "item_id")
    return out
