"""The Debian package under test: built once by ``make deb``, and a throwaway root
to install it in without touching the host.

The throwaway root is an overlay of ``/`` (the host's files, read-only below)
with a tmpfs above it, mounted in private mount, network and pid namespaces:

- apt and dpkg in it see the host's installed packages and write only to the
  tmpfs, which disappears with the namespaces;
- its network has nothing but its own loopback, so port 6080 and display :1 are
  free and no download can happen behind the test's back;
- the holder process is pid 1 of its pid namespace, so killing it kills every
  process started in there (websockify, Xtigervnc), leaving nothing running.

Commands run chrooted, with a clean environment (no pyenv on PATH), through
``nsenter``.  Needs root (or sudo), as ``make test`` does.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, TIMEOUT, reap

#: A clean environment for commands in the throwaway root.
CLEAN_ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
             "DEBIAN_FRONTEND=noninteractive"]

#: Run by ``unshare`` in the new namespaces: mount the overlay, then wait to be killed.
SETUP = r"""
set -eu
work=$1
mount -t tmpfs throwaway "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay throwaway -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" \
    "$work/root"
mount -t proc proc "$work/root/proc"
mount --rbind /dev "$work/root/dev"
mount -t tmpfs throwaway "$work/root/tmp"
mount -t tmpfs throwaway "$work/root/run"
ip link set lo up
echo ready
exec sleep infinity
"""


def build_deb(out: Path) -> Path:
    """``make deb`` into ``out`` (a build directory of its own); returns the .deb."""
    build = out / "build"
    subprocess.run(["make", "--no-print-directory", "deb", f"DEB_BUILD_DIR={build}",
                    f"DIST_DIR={out}"], cwd=REPO, check=True, capture_output=True,
                   timeout=300)
    (deb,) = out.glob("websockify_*.deb")
    return deb


class ThrowawayRoot:
    """An overlay of ``/`` in namespaces of its own; see the module docstring."""

    def __init__(self, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.root = work / "root"
        #: The holder, pid 1 of the namespace, as the host sees it (0 until known).
        self.pid = 0
        self._unshare = subprocess.Popen(
            ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
             "--propagation", "private",
             "sh", "-c", SETUP, "throwaway", str(work)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self._unshare.stdout is not None
        ready, _, _ = select.select([self._unshare.stdout], [], [], TIMEOUT)
        line = self._unshare.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.close()
            raise AssertionError(f"the throwaway root did not start: {line!r}")
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        self.pid = int(children.read_text().split()[0])

    def _enter(self, *namespaces: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), *namespaces]

    def command(self, script: str) -> list[str]:
        """The argv that runs ``script`` (sh) chrooted in the throwaway root."""
        return [*self._enter("-m", "-n", "-p"), "chroot", str(self.root), *CLEAN_ENV,
                "sh", "-c", f"cd / && {script}"]

    def run(self, script: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in the root; output is stdout and stderr together."""
        result = subprocess.run(self.command(script), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"{script}\n-> {result.returncode}\n{result.stdout}"
        return result

    def run_python_here(self, code: str, *args: str) -> str:
        """Run ``code`` (with ``args``) with this test's Python, not chrooted, in the
        root's network (to be a client of a server in there); returns its stdout."""
        result = subprocess.run(
            [*self._enter("-n"), sys.executable, "-c", code, *args], cwd=REPO,
            capture_output=True, text=True, timeout=TIMEOUT * 6)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def path(self, inside: str) -> Path:
        """A path of the root, as this process can read it."""
        return Path(f"/proc/{self.pid}/root") / str(self.root).lstrip("/") / inside.lstrip("/")

    def upper(self) -> Path:
        """The overlay's upper layer: every file the root changed."""
        return Path(f"/proc/{self.pid}/root") / str(self.work).lstrip("/") / "upper"

    def close(self) -> None:
        """Kill pid 1 of the namespace (and with it all its processes) and wait."""
        if self._unshare.poll() is None:
            if self.pid:
                os.kill(self.pid, signal.SIGKILL)
            else:
                self._unshare.kill()
        reap(self._unshare)
        if self._unshare.stdout is not None:
            self._unshare.stdout.close()

