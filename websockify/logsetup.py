"""Where the log goes and in which form: stderr, ``--log-file``, ``--syslog``; text or JSON.

Everything in websockify logs through stdlib ``logging``; this module only sets up
the handlers, once, at start-up (the command, or the WSGI application at import).

``--log-format json`` writes one JSON object per line (``time`` in UTC, ``level``,
``logger``, ``message``, ``exception`` when there is one) for log collectors.
Fields passed with ``extra=`` become keys of their own, so a caller that logs
``logger.info("…", extra={"client": …, "bytes_to_target": …})`` gives machines
the values without parsing the sentence.  That is the hook point of the access
log: one line per connection at its end, with its counters and ending as extras.
"""

from __future__ import annotations

import json
import logging
import time

from websockify.settings import Settings
from websockify.syslog import LOG_DAEMON, LOG_USER, SyslogHandler

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_FORMATS = ("text", "json")

# The attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc_iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int((created % 1) * 1000):03d}Z"


def configure(settings: Settings) -> None:
    """Install the handlers ``settings`` ask for; raises OSError (log file) or
    StartupError (syslog address).  -v shows debug lines."""
    ops = settings.operations
    json_format = ops.log_format == "json"
    formatter = JsonFormatter() if json_format else logging.Formatter(TEXT_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_file:
        handlers.append(logging.FileHandler(settings.log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
    if ops.syslog is not None:
        syslog = SyslogHandler(ops.syslog, facility=LOG_DAEMON if ops.daemon else LOG_USER,
                               legacy=ops.legacy_syslog)
        # syslog stamps its own time and severity: the text form is the bare message.
        syslog.setFormatter(formatter if json_format else logging.Formatter("%(message)s"))
        handlers.append(syslog)
    logging.basicConfig(level=logging.DEBUG if settings.verbose else logging.INFO,
                        handlers=handlers, force=True)
