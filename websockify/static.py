"""The static web server behind ``--web DIR``, as a WSGI application.

Upstream websockify serves noVNC this way (``websockify --web /usr/share/novnc 6080
host:5900``, then ``http://host:6080/vnc.html``); :class:`StaticFiles` is what the
lead's app calls for every request that is not a WebSocket upgrade.

Decisions the brief left open, in one place:

* Every request that cannot name something inside the root — a ``..`` segment (however
  it was encoded), a NUL byte, a symlink whose real path leaves the root — is answered
  404, like a missing file: the client learns nothing about what exists outside the
  root.  A directory entry that is such a symlink is left out of listings for the
  same reason.
* A non-directory requested with a trailing slash is 404 (the filesystem says
  ENOTDIR too), so relative links inside a served page never resolve against a
  phantom directory.
* A directory without ``index.html``/``index.htm`` is 404 with ``file_only``, as
  upstream does: the directory exists, but there is nothing there to serve.
* Files carry ``Cache-Control: no-cache``: browsers keep them but revalidate with
  If-Modified-Since, which costs a 304 and means an upgraded noVNC is picked up at
  once.  Listings carry ``no-store``.  No ETag is sent; an If-None-Match (which
  then matches only as ``*``) overrides If-Modified-Since, as RFC 9110 requires.
* Files that are not regular files (FIFOs, devices) are 404: reading them could
  block forever.  They are opened with O_NONBLOCK, so even the open cannot block.
* Compressed files (``.gz`` …) are sent as application/octet-stream rather than as
  the type of their content, because we do not send Content-Encoding.
* An OSError other than "not there" or "not allowed" (EIO …) is 500, logged at
  warning level; the response body never says why.
"""

from __future__ import annotations

import errno
import html
import logging
import mimetypes
import os
import stat
from collections.abc import Iterable, Iterator
from datetime import timezone
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

from websockify.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("websockify.static")

#: Served in this order when a directory is requested.
INDEX_FILES = ("index.html", "index.htm")
#: Read size when streaming a file: big enough for few syscalls, small enough that a
#: slow client never makes us hold much memory.
CHUNK_SIZE = 64 * 1024
#: Types that must be right whatever /etc/mime.types says: browsers refuse ES modules
#: (noVNC) served with a non-JavaScript type, and WebAssembly streaming compilation
#: requires application/wasm.
FORCED_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
}

#: errno values meaning "there is nothing by that name", as opposed to a fault.
_MISSING = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}
_HTML = "text/html; charset=utf-8"


class _FileBody:
    """A response body streaming ``length`` bytes of an open file, then closing it.

    The server calls :meth:`close` when the response ends, including when the client
    hangs up mid-way, so the descriptor never outlives the request.  Reading stops at
    the size announced in Content-Length even if the file grows meanwhile.
    """

    def __init__(self, file: BinaryIO, length: int) -> None:
        self._file = file
        self._length = length

    def __iter__(self) -> Iterator[bytes]:
        remaining = self._length
        while remaining > 0:
            data = self._file.read(min(CHUNK_SIZE, remaining))
            if not data:  # truncated meanwhile: the client sees a short body
                return
            remaining -= len(data)
            yield data

    def close(self) -> None:
        self._file.close()


class StaticFiles:
    """Serve the files under ``root`` over GET and HEAD.

    ``file_only`` turns directory listings off (404 instead).  The root is resolved
    once, here, so a missing root is a configuration error at start-up rather than a
    404 on every request.
    """

    def __init__(self, root: str | Path, file_only: bool = False) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ConfigError(f"web root {os.fspath(root)!r} is not a directory")
        self.file_only = file_only

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        # PEP 3333: PATH_INFO holds the %-decoded bytes of the path as latin-1 text.
        raw_path: bytes = environ.get("PATH_INFO", "").encode("latin-1")
        if method not in ("GET", "HEAD"):
            return _error(start_response, 405, False, raw_path, (("Allow", "GET, HEAD"),))
        head = method == "HEAD"
        segments = _segments(raw_path)
        if segments is None:
            log.info("refused %r: not a path inside the web root", raw_path)
            return _error(start_response, 404, head, raw_path)
        target = self._inside(os.path.join(self.root, *map(os.fsdecode, segments)))
        if target is None:
            log.info("refused %r: resolves outside the web root", raw_path)
            return _error(start_response, 404, head, raw_path)

        if not os.path.isdir(target):
            if raw_path.endswith(b"/"):
                return _error(start_response, 404, head, raw_path)
            return _serve_file(target, raw_path, environ, start_response, head)
        if not raw_path.endswith(b"/"):
            return _redirect_to_slash(segments, environ, start_response, head)
        for name in INDEX_FILES:
            index = self._inside(os.path.join(target, name))
            if index is not None and os.path.isfile(index):
                return _serve_file(index, name, environ, start_response, head)
        if self.file_only:
            return _error(start_response, 404, head, raw_path)
        return self._listing(target, raw_path, start_response, head)

    def _inside(self, path: str) -> str | None:
        """The real path of ``path`` if it lies within the root, else None.

        Symlinks are followed first, so a link inside the root pointing out of it
        is caught here, whatever its depth.
        """
        real = os.path.realpath(path)
        return real if os.path.commonpath([self.root, real]) == self.root else None

    def _listing(
        self, directory: str, raw_path: bytes, start_response: StartResponse, head: bool
    ) -> Iterable[bytes]:
        """An HTML page linking every entry of ``directory``; rebuilt on each request."""
        try:
            with os.scandir(directory) as entries:
                names = [
                    entry.name + "/" if _is_dir(entry) else entry.name
                    for entry in entries
                    if not entry.is_symlink() or self._inside(entry.path) is not None
                ]
        except OSError as exc:
            return _os_error(exc, start_response, head)
        names.sort(key=lambda name: (name.casefold(), name))
        if directory != self.root:
            names.insert(0, "../")
        title = f"Index of {html.escape(_display(raw_path))}"
        items = "".join(
            f'<li><a href="{quote(os.fsencode(name))}">{html.escape(_display(name))}</a></li>\n'
            for name in names
        )
        body = _page(title, f"<ul>\n{items}</ul>\n")
        return _respond(start_response, 200, body, head, (("Cache-Control", "no-store"),))


def _segments(raw_path: bytes) -> list[bytes] | None:
    """The path's non-empty segments, or None when it could escape or is malformed.

    ``..`` is refused rather than resolved: browsers normalise it away before sending,
    so only a crafted request carries one.  The path is already %-decoded, so encoded
    dots and slashes arrive here as plain ones and meet the same check.
    """
    if b"\0" in raw_path:
        return None
    segments = [s for s in raw_path.split(b"/") if s not in (b"", b".")]
    return None if b".." in segments else segments


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether a listing entry is (or links to) a directory; a broken link is not."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _display(name: str | bytes) -> str:
    """Text for a name on a page: undecodable bytes become U+FFFD, never an error."""
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    return raw.decode("utf-8", "replace")


def _content_type(name: str | bytes) -> str:
    """The Content-Type for a requested name, by its extension.

    The name is the one in the URL, not the real path: behind a symlink the browser
    still expects the type its URL promises.
    """
    name = os.fsdecode(name)
    forced = FORCED_TYPES.get(os.path.splitext(name)[1].lower())
    if forced is not None:
        return forced
    mime, encoding = mimetypes.guess_type(name, strict=False)
    if mime is None or encoding is not None:
        return "application/octet-stream"
    return mime


def _not_modified(environ: WSGIEnvironment, mtime: float) -> bool:
    """Whether the request's preconditions make this GET/HEAD a 304 (RFC 9110 13.2.2).

    If-None-Match, when present, decides alone and If-Modified-Since is ignored
    (13.1.3).  No ETag is ever sent, so no listed tag can match; only ``*`` does, as
    the file exists.
    """
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        return if_none_match.strip() == "*"
    return _not_modified_since(environ, mtime)


def _not_modified_since(environ: WSGIEnvironment, mtime: float) -> bool:
    """Whether If-Modified-Since (if any, and valid) is no older than ``mtime``."""
    header = environ.get("HTTP_IF_MODIFIED_SINCE")
    if not header:
        return False
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):  # RFC 9110: an invalid date is ignored
        return False
    if since.tzinfo is None:  # "-0000" in the header: UTC by RFC 5322
        since = since.replace(tzinfo=timezone.utc)
    # Last-Modified has whole seconds, so compare at that precision.
    return int(mtime) <= since.timestamp()


def _serve_file(
    path: str,
    name: str | bytes,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    head: bool,
) -> Iterable[bytes]:
    """200 (streamed), 304, or an error for the regular file at ``path``, asked for as ``name``.

    The status and headers come from the opened descriptor, not from an earlier
    stat, so size and date are those of the very file that is sent.  The file is
    closed here on every path except the one that hands it to the response body.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return _os_error(exc, start_response, head)
    file = os.fdopen(fd, "rb")
    handed_over = False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            log.info("refused %r: not a regular file", path)
            return _error(start_response, 404, head, path)
        headers = [
            ("Last-Modified", formatdate(info.st_mtime, usegmt=True)),
            ("Cache-Control", "no-cache"),
        ]
        if _not_modified(environ, info.st_mtime):
            start_response(_status(304), headers)
            return []
        headers += [
            ("Content-Type", _content_type(name)),
            ("Content-Length", str(info.st_size)),
        ]
        start_response(_status(200), headers)
        if head:
            return []
        wrapper = environ.get("wsgi.file_wrapper")
        body: Iterable[bytes] = (
            wrapper(file, CHUNK_SIZE) if wrapper is not None else _FileBody(file, info.st_size)
        )
        handed_over = True
        return body
    finally:
        if not handed_over:
            file.close()


def _redirect_to_slash(
    segments: list[bytes], environ: WSGIEnvironment, start_response: StartResponse, head: bool
) -> Iterable[bytes]:
    """301 to the directory's URL with a trailing slash, query string kept.

    The Location is rebuilt from the cleaned segments, so it always starts with one
    slash: a request for ``//example.com`` cannot become a redirect off-site.
    """
    prefix = quote(environ.get("SCRIPT_NAME", "").encode("latin-1"))
    location = prefix + "".join("/" + quote(s) for s in segments) + "/"
    query = environ.get("QUERY_STRING", "")
    if query:
        location += "?" + query
    link = html.escape(location)
    body = _page(_status(301), f'<p><a href="{link}">{link}</a></p>\n')
    return _respond(start_response, 301, body, head, (("Location", location),))


def _os_error(exc: OSError, start_response: StartResponse, head: bool) -> Iterable[bytes]:
    """The response for a failed open or scandir; the cause stays in the log."""
    if isinstance(exc, PermissionError):
        log.info("refused %r: permission denied", exc.filename)
        return _error(start_response, 403, head, exc.filename)
    if exc.errno in _MISSING:
        return _error(start_response, 404, head, exc.filename)
    log.warning("cannot read %r: %s", exc.filename, exc.strerror)
    return _error(start_response, 500, head, exc.filename)


def _error(
    start_response: StartResponse,
    code: int,
    head: bool,
    subject: object,
    headers: tuple[tuple[str, str], ...] = (),
) -> Iterable[bytes]:
    """A small HTML error page naming only the status; ``subject`` is for the log."""
    log.debug("%d for %r", code, subject)
    return _respond(start_response, code, _page(_status(code), ""), head, headers)


def _respond(
    start_response: StartResponse,
    code: int,
    body: bytes,
    head: bool,
    headers: tuple[tuple[str, str], ...] = (),
) -> Iterable[bytes]:
    """Start an HTML response of ``body``; HEAD gets the same headers and no body."""
    start_response(
        _status(code),
        [("Content-Type", _HTML), ("Content-Length", str(len(body))), *headers],
    )
    return [] if head else [body]


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def _page(title: str, content: str) -> bytes:
    """A minimal HTML document; ``title`` and ``content`` must already be escaped."""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1>\n{content}</body></html>\n"
    ).encode()
