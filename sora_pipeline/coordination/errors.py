"""The shared database's failures. A run must stop on any of them: without the database it can neither record what
it pays for nor know what was paid."""

from __future__ import annotations


class LedgerError(RuntimeError):
    """Base class of ledger errors."""


class LedgerUnavailable(LedgerError):
    """The ledger's database failed (unreachable, locked for too long, its tables gone). A run must stop: without
    the ledger it can neither record what it pays for nor know what was paid."""


class LedgerUnreachable(LedgerUnavailable):
    """The ledger's database did not answer when the ledger was opened (nothing was done yet)."""

    def __init__(self, url: str, host: str, cause: str) -> None:
        super().__init__(f"the ledger database {url} does not answer (host {host}: {cause})")
        self.url, self.host, self.cause = url, host, cause


class LedgerFileGone(LedgerUnavailable):
    """A SQLite ledger's file was deleted or replaced while this process used it: what is written from now on
    would land in a file nobody reads, and the next run would find an empty ledger and pay again."""
