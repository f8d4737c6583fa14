"""The exit codes of `python -m sora_pipeline.endpoint_tools`, its one-line error and its redacting output."""

from __future__ import annotations

from typing import TextIO

from sora_pipeline.redact import redact

EXIT_OK, EXIT_FETCH, EXIT_USAGE, EXIT_DOCUMENT, EXIT_PROFILE, EXIT_PRICE = 0, 1, 2, 3, 4, 5


class RefreshError(Exception):
    """One line for a person, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FETCH) -> None:
        super().__init__(redact(message))
        self.code = code


class Redacted:
    """A text stream that passes every write through the redactor (what refresh prints came from servers)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text))

    def flush(self) -> None:
        self.stream.flush()
