"""fal storage in the simulator: the upload flow of fal's clients, with the files served back.

`POST /storage/upload/initiate[?storage_type=…]` (auth like the queue) with JSON `{"content_type", "file_name"}`
answers `{"upload_url", "file_url"}` on this server: `PUT /_simulator/uploads/{token}` takes the bytes once (a
stand-in for a signed URL: no Authorization header allowed, the Content-Type must be the initiated one, at most
`MAX_UPLOAD_BYTES`), and `GET /_simulator/uploads/{name}` serves the file (public, like fal's CDN). An uploaded file
is registered with `video.register_upload`, so a job whose `image_url` is its file URL starts from its image.
Counted in `stats()["calls"]`: `upload_initiate`, `upload` (bytes stored), `upload_get`."""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from sora_pipeline.simulator.core import _base, _detail, auth_error
from sora_pipeline.simulator.video import register_upload

MAX_UPLOAD_BYTES = 128 << 20
MAX_INITIATE_BYTES = 64 << 10
UPLOAD_URL_SECONDS = 3600  # how long an upload URL takes its PUT
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}/[a-z0-9][a-z0-9.+-]{0,63}$")
_EXT = re.compile(r"\.[a-z0-9]{1,8}$")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^[0-9a-f]{32}(\.[a-z0-9]{1,8})?$")


@dataclass
class _Uploads:
    folder: str
    pending: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # token → (name, type, deadline)
    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (path, content type)


def _uploads(request: Request) -> _Uploads:
    state = request.app.state
    store = getattr(state, "sim_uploads", None)
    if store is None:
        folder = os.path.join(request.app.sim.cache_dir, "uploads")
        os.makedirs(folder, exist_ok=True)
        store = state.sim_uploads = _Uploads(folder)
    return store


def _auth_error(request: Request) -> Response | None:
    return auth_error(request.app.sim.config, request)


async def _body(request: Request, cap: int) -> bytes | None:
    """The request body, or None past `cap` bytes (declared or streamed)."""
    try:
        if int(request.headers.get("content-length", "0")) > cap:
            return None
    except ValueError:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def initiate(request: Request) -> Response:
    sim = request.app.sim
    sim.book.count_call("upload_initiate")
    if (resp := _auth_error(request)) is not None:
        return resp
    raw = await _body(request, MAX_INITIATE_BYTES)
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    content_type = data.get("content_type") if isinstance(data, dict) else None
    file_name = data.get("file_name") if isinstance(data, dict) else None
    if not isinstance(content_type, str) or not _CONTENT_TYPE.match(content_type.lower()):
        return _detail(422, [{"loc": ["body", "content_type"], "msg": "a MIME type is required",
                              "type": "value_error"}])
    ext = _EXT.search(file_name.lower()) if isinstance(file_name, str) else None
    store = _uploads(request)
    token, name = secrets.token_hex(16), secrets.token_hex(16) + (ext.group(0) if ext else "")
    store.pending[token] = (name, content_type.lower(), time.monotonic() + UPLOAD_URL_SECONDS)
    base = f"{_base(request)}/_simulator/uploads"
    return JSONResponse({"upload_url": f"{base}/{token}", "file_url": f"{base}/{name}"})


async def put_upload(request: Request) -> Response:
    sim = request.app.sim
    store = _uploads(request)
    token = request.path_params["name"]
    pending = store.pending.get(token) if _TOKEN.match(token) else None
    if pending is None or pending[2] < time.monotonic():
        return _detail(403, "Unknown or expired upload URL")
    if "authorization" in request.headers:  # a signed URL carries its own credentials, like GCS's
        return _detail(400, "A signed upload URL takes no Authorization header")
    name, content_type, _ = pending
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != content_type:
        return _detail(400, f"Content-Type must be {content_type}, as initiated")
    data = await _body(request, MAX_UPLOAD_BYTES)
    if data is None:
        return _detail(413, f"Upload larger than {MAX_UPLOAD_BYTES} bytes")
    path = os.path.join(store.folder, name)
    fd, tmp = tempfile.mkstemp(dir=store.folder, suffix=".part")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    del store.pending[token]
    store.files[name] = (path, content_type)
    register_upload(f"{_base(request)}/_simulator/uploads/{name}", path)
    sim.book.count_call("upload")
    return Response(status_code=200)


async def get_upload(request: Request) -> Response:
    request.app.sim.book.count_call("upload_get")
    name = request.path_params["name"]
    found = _uploads(request).files.get(name) if _NAME.match(name) else None
    if found is None or not os.path.isfile(found[0]):
        return _detail(404, "File not found")
    return FileResponse(found[0], media_type=found[1])


#: added to the simulator's routes (before the submit catch-all, which would take `POST /storage/…`)
ROUTES = [
    Route("/storage/upload/initiate", initiate, methods=["POST"]),
    Route("/_simulator/uploads/{name}", put_upload, methods=["PUT"]),
    Route("/_simulator/uploads/{name}", get_upload, methods=["GET"]),
]
