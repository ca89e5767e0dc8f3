"""``--record FILE``: upstream's session recordings, which noVNC's playback page reads.

A recording is a JavaScript file, ``FILE.N`` for the N-th session, holding every
payload each way with its time since the session began, in milliseconds::

    var VNC_frame_data = [
    '{12{RFB 003.008\\n',          <- to the client (from the target): '{ms{data'
    '}40}RFB 003.008\\n',          <- from the client (to the target):  '}ms}data'
    'EOF'];

Each data string holds one character per byte (code points 0-255), escaped as a
JavaScript single-quoted literal, so the page's decoder (``charCodeAt`` of each
character) gets the bytes back.  This is upstream websockify's format, byte for
byte; noVNC's ``tests/vnc_playback.html`` plays it back.

Hook point (not wired yet): the relay, once per connection: ``to_client`` with the
bytes read from the target (before framing), ``from_client`` with the decoded
payload of client messages, ``close`` at the connection's end; ``N`` counts the
server's WebSocket connections from 1.  Writes go to a local file and are small;
the file is flushed only at close.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TextIO

HEADER = "var VNC_frame_data = [\n"
FOOTER = "'EOF'];\n"


def escape(data: bytes) -> str:
    """``data`` as the body of a JavaScript single-quoted string, one char per byte."""
    return data.decode("latin-1").encode("unicode_escape").decode("ascii").replace("'", "\\'")


def record_path(base: str, session: int) -> str:
    """The file of the ``session``-th connection (upstream's ``FILE.N``)."""
    return f"{base}.{session}"


class SessionRecorder:
    """Writes one session's recording to ``file``; ``clock`` gives seconds."""

    def __init__(self, file: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._file: TextIO | None = file
        self._clock = clock
        self._start_ms = int(clock() * 1000)
        file.write(HEADER)

    @classmethod
    def open(cls, base: str, session: int) -> SessionRecorder:
        """Create (or truncate) the session's file, readable by us only: it holds
        everything the user typed.  Raises OSError."""
        fd = os.open(record_path(base, session), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        return cls(os.fdopen(fd, "w", encoding="ascii"))

    def to_client(self, data: bytes) -> None:
        """Bytes from the target, on their way to the client."""
        self._write("{", data)

    def from_client(self, data: bytes) -> None:
        """Bytes from the client, on their way to the target."""
        self._write("}", data)

    def _write(self, mark: str, data: bytes) -> None:
        if self._file is not None and data:
            elapsed = int(self._clock() * 1000) - self._start_ms
            self._file.write(f"'{mark}{elapsed}{mark}{escape(data)}',\n")

    def close(self) -> None:
        """End the array and close the file; later calls do nothing."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.write(FOOTER)
            finally:
                file.close()
