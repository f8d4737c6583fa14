"""fal storage uploads for large input images: pure httpx, no Dagster, no ledger.

The flow is the one of fal's own clients (`fal_client` `_upload_via_storage`, fal-js `storage.ts`):

1. `POST {storage_url}/storage/upload/initiate?storage_type=fal-cdn-v3` with `Authorization: Key <FAL_KEY>`, JSON
   `{"content_type", "file_name"}` and the lifetime as `X-Fal-Object-Lifecycle-Preference:
   {"expiration_duration_seconds": N}` → `{"upload_url", "file_url"}`;
2. `PUT upload_url` with the bytes and their `Content-Type` only (a signed URL: it carries its own credentials);
3. `file_url` is what the endpoint gets as `image_url`.

Rules (tests/test_fal_storage.py holds each against a hostile server on loopback): the key goes only to the
configured storage origin, never to `upload_url`; redirects are never followed (a 3xx is an error); the initiate
answer is read up to `ANSWER_BYTES` (declared or streamed, more is refused); `upload_url` and `file_url` must be
https, or plain http on a loopback host when the storage origin itself is plain http on loopback (the simulator);
every message passes through the redactor (`FalError` redacts, and the key is registered); the bytes are capped at
`max_upload_bytes` before anything is sent.

Settings (`StorageSettings.from_env`, given the environment by the pipeline's settings, which pass them down;
validated when the code location loads): `SORA_UPLOAD_THRESHOLD_BYTES`
(default 8 MiB: larger images are uploaded, smaller ones stay data URIs), `SORA_MAX_UPLOAD_BYTES` (default 50 MiB),
`SORA_UPLOAD_LIFETIME_S` (default 7 days: sent as the file's lifecycle, and the ledger re-uploads before it ends),
`SORA_FAL_STORAGE_URL` (default: `https://rest.fal.ai`, fal_client's REST_URL, for fal; the queue's own address
for a simulator)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from sora_pipeline.fal.errors import FalError
from sora_pipeline.fal.limits import (ACCEPT_ENCODING, BoundedDecoder, MiB, UnreadableEncoding, araw_chunks,
                                      content_length, describe_bytes, parse_byte_cap)
from sora_pipeline.fal.policies import RetryPolicy
from sora_pipeline.fal.urls import origin, origin_url
from sora_pipeline.redact import register_secret
from sora_pipeline.wire import is_loopback

DEFAULT_STORAGE_URL = "https://rest.fal.ai"  # fal_client's REST_URL (rest.alpha.fal.ai before 2026-02)
STORAGE_TYPE = "fal-cdn-v3"
THRESHOLD_ENV, MAX_UPLOAD_ENV = "SORA_UPLOAD_THRESHOLD_BYTES", "SORA_MAX_UPLOAD_BYTES"
LIFETIME_ENV, STORAGE_URL_ENV = "SORA_UPLOAD_LIFETIME_S", "SORA_FAL_STORAGE_URL"
DEFAULT_THRESHOLD_BYTES = 8 * MiB
DEFAULT_MAX_UPLOAD_BYTES = 50 * MiB
DEFAULT_LIFETIME_S = 7 * 24 * 3600
ANSWER_BYTES = 64 * 1024  # an initiate answer is a few hundred bytes; error answers are cut here too
MAX_URL_LENGTH = 4096
_RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class StorageUploadError(FalError):
    """The image could not be uploaded to fal storage (this item fails; nothing was submitted)."""

    error_type = "image_upload"


@dataclass(frozen=True)
class StorageSettings:
    threshold_bytes: int = DEFAULT_THRESHOLD_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    lifetime_s: int = DEFAULT_LIFETIME_S
    storage_url: str | None = None  # None: fal's storage for fal, the queue's own origin for a simulator

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StorageSettings:
        """The four settings from `env` (the environment, as `PipelineSettings.from_env` reads it); ValueError
        naming the variable when one is wrong."""
        threshold = parse_byte_cap(env.get(THRESHOLD_ENV), THRESHOLD_ENV, DEFAULT_THRESHOLD_BYTES)
        max_upload = parse_byte_cap(env.get(MAX_UPLOAD_ENV), MAX_UPLOAD_ENV, DEFAULT_MAX_UPLOAD_BYTES)
        if threshold > max_upload:
            raise ValueError(f"{THRESHOLD_ENV}={threshold} is above {MAX_UPLOAD_ENV}={max_upload}: images between "
                             "the two could be sent nowhere; set the threshold at most the upload cap")
        lifetime = parse_byte_cap(env.get(LIFETIME_ENV), LIFETIME_ENV, DEFAULT_LIFETIME_S)  # whole seconds ≥ 1
        url = (env.get(STORAGE_URL_ENV) or "").strip() or None
        if url is not None:
            check_storage_url(url, setting=STORAGE_URL_ENV)
        return cls(threshold, max_upload, lifetime, url)

    def origin_for(self, *, backend: str, queue_base_url: str) -> str:
        """Where uploads go: the setting, else the simulator's own base URL, else fal's storage."""
        if self.storage_url:
            return self.storage_url.rstrip("/")
        return queue_base_url.rstrip("/") if backend == "simulator" else DEFAULT_STORAGE_URL


@dataclass(frozen=True)
class UploadedFile:
    file_url: str
    size: int
    content_type: str
    uploaded_at: datetime
    expires_at: datetime


def check_storage_url(url: str, *, setting: str = STORAGE_URL_ENV) -> str:
    """The storage origin: https, or plain http on a loopback host (a simulator); no path, query or credentials."""
    parts = urlsplit(url)
    where = origin(url)
    if where is None or parts.username or parts.password or parts.query or parts.path.strip("/"):
        raise ValueError(f"{setting}={url!r} must be an origin like {DEFAULT_STORAGE_URL} (no path or credentials)")
    if where[0] != "https" and not is_loopback(where[1]):
        raise ValueError(f"{setting}={url!r} must be https (plain http only on a loopback host, for a simulator)")
    return url.rstrip("/")


def _where(url: str) -> str:
    return (origin_url(url) or "an unusable URL")[:160]


class _Retry(Exception):
    def __init__(self, error: StorageUploadError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error, self.retry_after = error, retry_after


class StorageUploader:
    """Uploads bytes to fal storage (initiate → PUT → file URL). One instance per storage origin and key; every
    `upload` opens its own short-lived connections (uploads are rare: once per image and lifetime)."""

    def __init__(self, *, storage_url: str, key: str | SecretStr | None, lifetime_s: int = DEFAULT_LIFETIME_S,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, retry: RetryPolicy | None = None,
                 timeout: float = 60.0, connect_timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None, verify: Any = True) -> None:
        self.storage_url = check_storage_url(storage_url, setting="storage_url")
        self.origin = origin(self.storage_url)
        # plain http answers are acceptable only from (and to) loopback, when the origin itself is plain http there
        self._plain_http_ok = self.origin[0] == "http"
        self._key = key if isinstance(key, SecretStr) or key is None else SecretStr(key)
        register_secret(self._key)  # an answer that echoes it back is redacted before anyone sees it
        self.lifetime_s = int(lifetime_s)
        self.max_upload_bytes = int(max_upload_bytes)
        self.retry = retry or RetryPolicy(max_attempts=3, initial_delay=0.2, max_delay=2.0, total_timeout=60.0)
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=None)
        self._transport, self._verify = transport, verify

    def __repr__(self) -> str:
        return f"StorageUploader(storage_url={self.storage_url!r}, key={'set' if self._key else 'unset'})"

    @property
    def initiate_url(self) -> str:
        return f"{self.storage_url}/storage/upload/initiate?storage_type={STORAGE_TYPE}"

    async def upload(self, data: bytes, content_type: str, file_name: str) -> UploadedFile:
        """Upload `data`; its `file_url` (valid for `lifetime_s`), or `StorageUploadError` (retryable when trying
        again later may help)."""
        if len(data) > self.max_upload_bytes:
            cap = describe_bytes(self.max_upload_bytes)
            raise StorageUploadError(f"the image is {describe_bytes(len(data))}, over the {cap} upload cap "
                                     f"({MAX_UPLOAD_ENV})", retryable=False)
        attempt = 0
        while True:
            attempt += 1
            uploaded_at = datetime.now(UTC)  # the lifetime counts from before the upload: never overestimated
            try:
                async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False, verify=self._verify,
                                             transport=self._transport,
                                             headers={"Accept-Encoding": ACCEPT_ENCODING}) as http:
                    upload_url, file_url = await self._initiate(http, content_type, file_name)
                    await self._put(http, upload_url, data, content_type)
            except _Retry as signal:
                if attempt >= self.retry.max_attempts:
                    raise signal.error from None
                await asyncio.sleep(self.retry.backoff(attempt, signal.retry_after))
                continue
            return UploadedFile(file_url, len(data), content_type, uploaded_at,
                                uploaded_at + timedelta(seconds=self.lifetime_s))

    # -- the two calls ---------------------------------------------------------------------------------
    async def _initiate(self, http: httpx.AsyncClient, content_type: str, file_name: str) -> tuple[str, str]:
        lifecycle = json.dumps({"expiration_duration_seconds": self.lifetime_s})
        headers = {"Accept": "application/json", "User-Agent": "sora-pipeline/0.1",
                   # fal_client sends both: the CDN reads the first, storage-backed initiation the second
                   "X-Fal-Object-Lifecycle": lifecycle, "X-Fal-Object-Lifecycle-Preference": lifecycle}
        if self._key is not None:
            headers["Authorization"] = f"Key {self._key.get_secret_value()}"
        body = {"content_type": content_type, "file_name": file_name}
        code, text = await self._call(http, "POST", self.initiate_url, "initiate", json=body, headers=headers)
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise StorageUploadError("fal storage answered the upload initiation with something other than a JSON "
                                     "object", status_code=code, retryable=True)
        return (self._checked_url(answer.get("upload_url"), "upload_url"),
                self._checked_url(answer.get("file_url"), "file_url"))

    async def _put(self, http: httpx.AsyncClient, upload_url: str, data: bytes, content_type: str) -> None:
        # a signed URL: it carries its own credentials, so no Authorization (the key never leaves its origin)
        await self._call(http, "PUT", upload_url, "upload", content=data, headers={"Content-Type": content_type})

    async def _call(self, http: httpx.AsyncClient, method: str, url: str, what: str,
                    **kwargs: Any) -> tuple[int, str]:
        """(status, body) of a 2xx answer read up to `ANSWER_BYTES`; every other outcome raises."""
        try:
            async with http.stream(method, url, **kwargs) as response:
                code = response.status_code
                declared = content_length(response)
                if 200 <= code < 300 and declared is not None and declared > ANSWER_BYTES:
                    raise StorageUploadError(self._too_large(what, declared), status_code=code, retryable=False)
                chunks, size = [], 0
                try:
                    decoder = BoundedDecoder(response)
                except UnreadableEncoding as exc:
                    raise StorageUploadError(f"the fal storage {what} answer: {exc}", status_code=code,
                                             retryable=False) from None
                async for raw in araw_chunks(response):
                    for chunk in decoder.pieces(raw):
                        size += len(chunk)
                        if size > ANSWER_BYTES:
                            if 200 <= code < 300:
                                raise StorageUploadError(self._too_large(what), status_code=code, retryable=False)
                            break  # an error answer only feeds a message: cut
                        chunks.append(chunk)
                    if size > ANSWER_BYTES:
                        break
        except httpx.HTTPError as exc:
            raise _Retry(StorageUploadError(f"network error on the fal storage {what} to {_where(url)} "
                                            f"({type(exc).__name__})", retryable=True)) from None
        text = b"".join(chunks).decode("utf-8", "replace")
        if 200 <= code < 300:
            return code, text
        raise self._error(response, what, url, text)

    # -- answers -----------------------------------------------------------------------------------------
    def _error(self, response: httpx.Response, what: str, url: str, text: str) -> Exception:
        code = response.status_code
        if 300 <= code < 400:
            target = response.headers.get("location", "")
            to = f" to {_where(target)}" if origin_url(target) else ""
            return StorageUploadError(f"fal storage answered HTTP {code} (a redirect{to}) on the {what} at "
                                      f"{_where(url)}; redirects are never followed", retryable=False)
        detail = _detail(text)
        message = f"fal storage answered HTTP {code} on the {what} at {_where(url)}" + (f": {detail}" if detail
                                                                                       else "")
        if code in (401, 403) and what == "initiate":
            return StorageUploadError(message + "; check FAL_KEY", retryable=False)
        error = StorageUploadError(message, retryable=code in _RETRYABLE)
        return _Retry(error, _retry_after(response)) if code in _RETRYABLE else error

    def _too_large(self, what: str, declared: int | None = None) -> str:
        size = f"declares {declared:,} bytes" if declared is not None else "is longer"
        return (f"the fal storage {what} answer {size}, over the {describe_bytes(ANSWER_BYTES)} cap on it; "
                "it was not used")

    def _checked_url(self, value: Any, name: str) -> str:
        """`upload_url` / `file_url` of the initiate answer: https (plain http only loopback-to-loopback)."""
        if not isinstance(value, str) or not value or len(value) > MAX_URL_LENGTH:
            raise StorageUploadError(f"the fal storage initiate answer has no usable {name}", retryable=False)
        where, parts = origin(value), urlsplit(value)
        if where is None or parts.username or parts.password or any(c.isspace() or ord(c) < 32 for c in value):
            raise StorageUploadError(f"the fal storage initiate answer's {name} is not a plain http(s) URL; "
                                     "refused", retryable=False)
        if where[0] == "https" or (self._plain_http_ok and is_loopback(where[1])):
            return value
        raise StorageUploadError(f"the fal storage initiate answer's {name} is not https ({_where(value)}); "
                                 "refused", retryable=False)



def _detail(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(body, dict):
        body = body.get("detail", body.get("error", body))
    return " ".join(str(body).split())[:300]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None
