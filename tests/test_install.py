"""`pip install .` into a fresh virtualenv builds rebind.so into the package, and the
installed websockify wraps a program with no setting at all.

The source is copied without any built rebind.so, so the install itself must
compile it; websockify then runs from outside the source tree, so nothing of the
tree can be picked up by mistake.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launcher_support import echo_server, wait_until, ws_roundtrip
from tests.support import LISTENING, REPO, TIMEOUT

pytestmark = pytest.mark.slow

#: pip downloads gevent and numpy on a cold cache.
INSTALL_TIMEOUT = 600


def copy_source(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info", "build")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, destination / name)
    for directory in ("websockify", "rebind"):
        shutil.copytree(REPO / directory, destination / directory, ignore=ignore)
    return destination


def test_pip_install_builds_the_shim_and_wrap_mode_works(tmp_path: Path) -> None:
    source = copy_source(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", str(source)],
                   check=True, timeout=INSTALL_TIMEOUT)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import websockify, pathlib; print(pathlib.Path(websockify.__file__).parent)"],
        cwd=tmp_path / "venv", capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    assert Path(installed).is_relative_to(venv), installed
    assert (Path(installed) / "rebind.so").is_file()

    env = dict(os.environ, WEBSOCKIFY_REBIND="", PYTHONUNBUFFERED="1")
    log = tmp_path / "websockify.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(venv / "bin" / "websockify"), "127.0.0.1:0", "--",
             *echo_server("--port", "5901")],
            cwd=tmp_path / "venv", env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: LISTENING.search(log.read_text()), "the listening line")
        match = LISTENING.search(log.read_text())
        assert match is not None
        assert ws_roundtrip(int(match["port"]), b"installed") == b"installed"
    finally:
        server.terminate()
        assert server.wait(TIMEOUT) == 0, log.read_text()
