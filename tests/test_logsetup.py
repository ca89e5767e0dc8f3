"""--log-format json: one JSON object per record, with extra= fields as keys of their own."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from websockify.logsetup import JsonFormatter


def record(message: str, *args: object, extra: dict[str, object] | None = None,
           exc_info: Any = None) -> logging.LogRecord:
    logger = logging.getLogger("websockify.test")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, args,
                             exc_info, extra=extra)


def test_a_record_is_one_line_of_json() -> None:
    line = JsonFormatter().format(record("client %s left\nafter %d s", "10.0.0.1", 42))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "client 10.0.0.1 left\nafter 42 s"
    assert entry["level"] == "INFO" and entry["logger"] == "websockify.test"
    assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-12-02T09:30:01.123Z")
    assert set(entry) == {"time", "level", "logger", "message"}


def test_extra_fields_become_keys_and_cannot_overwrite_ours() -> None:
    """The access log's hook: its values reach machines without parsing the sentence."""
    fields = {"client": "198.51.100.7", "bytes_to_target": 310, "close_code": 1000,
              "closed_by": "client", "duration": 41.5, "peer": ("::1", 6080)}
    entry = json.loads(JsonFormatter().format(record("connection ended", extra=fields)))
    assert {key: entry[key] for key in fields} == {**fields, "peer": ["::1", 6080]}
    entry = json.loads(JsonFormatter().format(record("real", extra={"level": "FAKE"})))
    assert entry["level"] == "INFO", "a caller's field never replaces the record's own"


def test_unserialisable_values_and_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(
        record("failed", extra={"target": object()}, exc_info=exc_info)))
    assert entry["target"].startswith("<object object at")
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]
