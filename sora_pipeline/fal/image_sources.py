"""Where a catalog image may come from: one allowlist, shared by the row rules (`catalog.rows`, which reject the
row with a reason) and by `fal.inputs.load_image_input` (which refuses the image again before reading it).

Allowed: `https://` URLs (passed through to fal, never fetched here), `data:image/...;base64,` URIs, local files
(plain paths or `file://`; the row rules confine them to the catalog folder and SORA_IMAGE_ROOTS), `memory://`,
and the object stores whose fsspec driver is installed: `s3://`/`s3a://` (s3fs), `gs://`/`gcs://` (gcsfs),
`az://`/`abfs://`/`abfss://` (adlfs). Everything else — `http://`, `ftp://`, `webhdfs://`, `sftp://`, `smb://`,
`github://`, wrapper and chained fsspec URLs, ... — is refused without being opened: fsspec knows many protocols,
and each one would otherwise be a way to make this process connect somewhere (or fail the day on a missing
driver). No import here touches a driver: availability is checked with `importlib.util.find_spec`, once."""

from __future__ import annotations

import functools
import importlib.util
import re
from typing import NamedTuple


class ObjectStore(NamedTuple):
    """An object store accepted when its fsspec driver (`module`) is importable."""

    module: str
    install: str


_S3 = ObjectStore("s3fs", "pip install 'sora_pipeline[s3]'")
_GCS = ObjectStore("gcsfs", "pip install 'sora_pipeline[gcs]'")
_AZURE = ObjectStore("adlfs", "pip install 'sora_pipeline[az]'")
OBJECT_STORES: dict[str, ObjectStore] = {"s3": _S3, "s3a": _S3, "gs": _GCS, "gcs": _GCS,
                                         "az": _AZURE, "abfs": _AZURE, "abfss": _AZURE}
LOCAL_SCHEMES = frozenset({"file", "local"})
MEMORY_SCHEMES = frozenset({"memory"})
ALLOWED = ("https, data:image URIs, local files under the catalog folder or SORA_IMAGE_ROOTS, memory://, "
           "s3/gs/az with their driver")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", re.S)


@functools.lru_cache(maxsize=None)
def driver_installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it); cached for the process."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def scheme_of(ref: str) -> str | None:
    """The lower-cased scheme of a `scheme://...` reference, None for a plain path (or a `data:` URI)."""
    m = _SCHEME_RE.match(ref)
    return m.group(1).lower() if m else None


def refusal(scheme: str) -> str | None:
    """Why a `scheme://` image source is not read (one line, naming what to install when that is the fix), or
    None when it is allowed. `https` and `data` have their own rules (see `catalog.rows`) and are not handled
    here; `file`/`local` are allowed (the roots are the caller's to check)."""
    scheme = scheme.lower()
    if scheme in LOCAL_SCHEMES or scheme in MEMORY_SCHEMES:
        return None
    store = OBJECT_STORES.get(scheme)
    if store is not None:
        # (a module global looked up at each call: tests simulate a missing driver by replacing it)
        return None if driver_installed(store.module) else f"{scheme}:// needs {store.module}: {store.install}"
    if scheme == "http":
        return "plain http:// is not an allowed image source (use https://)"
    return f"{scheme}:// is not an allowed image source (allowed: {ALLOWED})"
