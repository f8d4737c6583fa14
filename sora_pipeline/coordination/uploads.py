"""`UploadCache`: fal storage URLs remembered per image content hash and storage origin (table `fal_uploads`,
schema 4), so a retry, a re-run or another run of the same image uses the file uploaded before instead of uploading
it again — until the file is near the end of its lifetime, then it is uploaded once more."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from .database import Database
from .engine import read, write
from .schema import aware, uploads, utcnow

_U = uploads.c
#: a remembered URL is used while at least this share of its lifetime is left (fal may fetch the image only when
#: the request starts, which can be long after the submit)
REUSE_WHILE_LEFT = 0.25


class UploadCache:
    """The `fal_uploads` rows of one database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._engine = database.engine

    def cached_upload(self, content_sha256: str, storage_origin: str, *, now: datetime | None = None,
                      margin: timedelta | None = None) -> str | None:
        """The file URL of this content at this storage origin, if it stays valid for `margin` more (default: a
        quarter of its lifetime); else None (never uploaded there, or expiring: upload again)."""
        now = aware(now, "now") or utcnow()
        with read(self._engine) as conn:
            row = conn.execute(select(_U.file_url, _U.uploaded_at, _U.expires_at).where(
                _U.content_sha256 == content_sha256, _U.storage_origin == storage_origin)).first()
        if row is None:
            return None
        keep = margin if margin is not None else (row.expires_at - row.uploaded_at) * REUSE_WHILE_LEFT
        return row.file_url if now + keep < row.expires_at else None

    def remember_upload(self, content_sha256: str, storage_origin: str, *, file_url: str, size: int | None,
                        content_type: str | None, uploaded_at: datetime, expires_at: datetime) -> None:
        """Record (or replace) the file URL of this content at this storage origin."""
        aware(uploaded_at, "uploaded_at")
        aware(expires_at, "expires_at")
        values = dict(file_url=file_url, size=size, content_type=content_type, uploaded_at=uploaded_at,
                      expires_at=expires_at)
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(uploads).values(content_sha256=content_sha256, storage_origin=storage_origin, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["content_sha256", "storage_origin"], set_=values)
        with write(self._engine) as conn:
            conn.execute(stmt)
