"""--record's file format: upstream's, byte for byte, and read back by a JavaScript engine.

node evaluates the recording as the browser does (a plain script defining
VNC_frame_data) and decodes it the way noVNC's playback page does: the time
between the marks, one byte per character after them.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import TIMEOUT
from websockify.recording import SessionRecorder, escape, record_path


class FakeClock:
    """Seconds on demand: the recorder's timestamps without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_file_is_upstreams_format_exactly() -> None:
    clock = FakeClock()
    buffer = io.StringIO()
    recorder = SessionRecorder(buffer, clock)
    clock.now += 0.012
    recorder.to_client(b"RFB 003.008\n")
    clock.now += 0.0285
    recorder.from_client(b"it's \\ \x00\xff")
    recorder.from_client(b"")  # nothing to record
    text = buffer.getvalue()
    recorder.close()
    recorder.close()
    recorder.to_client(b"after the end")  # ignored once closed
    assert text + "'EOF'];\n" == (
        "var VNC_frame_data = [\n"
        "'{12{RFB 003.008\\n',\n"
        "'}40}it\\'s \\\\ \\x00\\xff',\n"
        "'EOF'];\n")
    assert buffer.closed


def test_escape_keeps_printable_ascii_and_escapes_the_rest() -> None:
    assert escape(b"abc XYZ 09") == "abc XYZ 09"
    assert escape(b"\t\r\n'\\\x7f\x80") == "\\t\\r\\n\\'\\\\\\x7f\\x80"


def test_record_path_is_upstreams() -> None:
    assert record_path("/tmp/session", 3) == "/tmp/session.3"


@pytest.mark.skipif(shutil.which("node") is None, reason="node (package nodejs) is missing")
def test_a_javascript_engine_reads_every_byte_back(tmp_path: Path) -> None:
    every_byte = bytes(range(256))
    messages = [("to", every_byte), ("from", b"'quoted' and \\back\\slashed"),
                ("to", every_byte[::-1] * 3)]
    clock = FakeClock()
    recorder = SessionRecorder.open(str(tmp_path / "rec"), 1)
    for step, (direction, data) in enumerate(messages):
        clock.now += step  # the recorder's clock is the monotonic one; this one is fake
        getattr(recorder, f"{direction}_client")(data)
    recorder.close()
    assert (tmp_path / "rec.1").stat().st_mode & 0o777 == 0o600, "what users typed stays private"

    decoder = """
        const fs = require('fs');
        eval(fs.readFileSync(process.argv[1], 'latin1') + '; globalThis.frames = VNC_frame_data;');
        const out = [];
        for (const frame of globalThis.frames) {
            if (frame === 'EOF') break;
            const mark = frame[0];
            const dataIdx = frame.indexOf(mark, 1) + 1;
            const bytes = [];
            for (let j = dataIdx; j < frame.length; j++) bytes.push(frame.charCodeAt(j));
            out.push({fromClient: mark === '}', time: parseInt(frame.slice(1, dataIdx - 1)),
                      bytes: bytes});
        }
        console.log(JSON.stringify(out));
    """
    done = subprocess.run(["node", "-e", decoder, str(tmp_path / "rec.1")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    frames = json.loads(done.stdout)
    assert [(f["fromClient"], bytes(f["bytes"])) for f in frames] == [
        (direction == "from", data) for direction, data in messages]
    assert all(isinstance(f["time"], int) for f in frames)
