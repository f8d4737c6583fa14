"""One redactor for every secret in use: the fal key, a row's OpenAI key, any `Authorization` value.

Secrets are registered once (`register_secret`; `FAL_KEY` and `SORA_OPENAI_API_KEY` from the environment are
registered on import) and every error message, server answer and log record passes through `redact` before it
is logged, stored or raised. A server that echoes a key may cut it (fal's price `unit` is at most 40 characters):
any run of 16+ characters that starts a registered secret (or a part of a `key_id:key_secret` fal key) is masked,
and so is a `Key …`/`Bearer …` credential with a digit in it. `install_log_redaction()` makes every `logging`
record of the process pass through it too (Dagster's event log and compute logs are built from those records).
No Dagster import."""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

MASK = "[REDACTED]"
MIN_SECRET_LENGTH = 8  # shorter values would mask ordinary words; no real key is that short
MIN_CUT = 16  # a cut secret (an echo of its start) is masked from this length on
SECRET_ENV_VARS = ("FAL_KEY", "SORA_OPENAI_API_KEY", "OPENAI_API_KEY")

# `Authorization: Key abc`, `"authorization": "Bearer abc"`, `authorization=Key abc` (whatever the scheme)
_AUTH_VALUE = re.compile(
    r"""(?ix)(authorization["']?\s*[:=]\s*["']?)   # the header name and separator
        (?:(?:key|bearer|basic|token)\s+)?            # an optional scheme
        [^\s"',;}\]]+""")
# `Key abc123…`, `Bearer abc123…` anywhere (an echoed header without its name): 12+ characters, one a digit
_SCHEME_VALUE = re.compile(r"(?<![A-Za-z])((?:Key|KEY|Bearer|BEARER)\s+)(?=[^\s\"',;}\]]*\d)[^\s\"',;}\]]{12,}")
_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_pattern: re.Pattern[str] | None = None


def register_secret(value: Any) -> None:
    """Remember a secret so `redact` masks it wherever it shows up (a `SecretStr` or a plain string)."""
    global _secrets, _pattern
    if value is None:
        return
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    value = str(value).strip()
    if len(value) < MIN_SECRET_LENGTH or value in _secrets:
        return
    with _lock:
        secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))  # longest first: no partial leaks
        parts = {p for s in secrets for p in (s, *s.split(":")) if len(p) >= MIN_SECRET_LENGTH}
        _pattern = re.compile("|".join(_head_of(p) for p in sorted(parts, key=len, reverse=True)))
        _secrets = secrets


def _head_of(secret: str) -> str:
    """A pattern for `secret` and every cut of its start of at least MIN_CUT characters (the longest wins)."""
    rest = secret[MIN_CUT:]
    return re.escape(secret[:MIN_CUT]) + "".join("(?:" + re.escape(c) for c in rest) + ")?" * len(rest)


def register_env_secrets(env: dict[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    for name in SECRET_ENV_VARS:
        register_secret(env.get(name))


def redact(text: Any) -> Any:
    """`text` with every registered secret and every Authorization value masked (non-strings are returned)."""
    if not isinstance(text, str) or not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_VALUE.sub(lambda m: m.group(1) + MASK, text)
    if "Key" in text or "KEY" in text or "earer" in text or "EARER" in text:
        text = _SCHEME_VALUE.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_obj(value: Any) -> Any:
    """`redact` applied to every string inside dicts, lists and tuples (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_obj(k): redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_obj(v) for v in value)
    return value


def contains_secret(text: str) -> bool:
    return isinstance(text, str) and redact(text) != text


_installed = False


def install_log_redaction() -> None:
    """Every log record of this process is redacted when it is created (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a broken format string: leave it to the handler to report
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, ()
            if record.exc_info and record.exc_info[1] is not None and contains_secret(str(record.exc_info[1])):
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


register_env_secrets()
