"""Install websockify; builds rebind.so (the LD_PRELOAD shim) into the package.

rebind.so is a plain shared library loaded by LD_PRELOAD, not a Python extension,
so it is compiled by a small build step of its own and shipped as package data.
Because it is machine code, a wheel that carries it is tagged for its platform
(``py3-none-linux_x86_64``), never ``py3-none-any``.  Without a C compiler the
package installs anyway, without the shim: websockify then says so when it is
asked to wrap a program, and ``--rebind FILE`` still works.

The version is read from ``websockify/__init__.py`` (the one place it is
written) without importing the package, whose dependencies may not be
installed yet.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 70.1 has its own; before that it came with the wheel package.
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover - depends on the installed setuptools
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:  # no wheel support at all (a plain `setup.py install`)
        bdist_wheel = None

HERE = Path(__file__).resolve().parent
REBIND_SOURCE = HERE / "rebind" / "rebind.c"
REBIND_FLAGS = ["-O2", "-Wall", "-Wextra", "-fPIC", "-shared"]


def read_version() -> str:
    text = (HERE / "websockify" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    if match is None:
        raise SystemExit("websockify/__init__.py does not set __version__")
    return match.group(1)


class BuildWithRebind(build_py):
    """Compile rebind/rebind.c into websockify/rebind.so next to the Python files.

    A missing compiler or a failed compile is a warning, not an error: the relay
    needs no shim, only wrap mode does, and it says how to get one.
    """

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "websockify" / "rebind.so"
        problem = self._compile(target)
        if problem:
            target.unlink(missing_ok=True)
            self.warn(f"websockify: rebind.so not built ({problem}); websockify relays "
                      "normally, but wrapping a program (-- COMMAND) needs the shim: install "
                      "a C compiler (e.g. apt install gcc libc6-dev) and reinstall, "
                      "or give --rebind FILE")

    def _compile(self, target: Path) -> str | None:
        """Build the shim at ``target``; returns why it was not built, or None."""
        if not REBIND_SOURCE.exists():
            return f"{REBIND_SOURCE} is missing"
        compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or "gcc"]
        if shutil.which(compiler[0]) is None:
            return f"no C compiler found ({compiler[0]!r}; set $CC to use another)"
        target.parent.mkdir(parents=True, exist_ok=True)
        # Distribution builds pass hardening flags this way (dpkg-buildflags).
        flags = [flag for name in ("CPPFLAGS", "CFLAGS", "LDFLAGS")
                 for flag in shlex.split(os.environ.get(name, ""))]
        command = [*compiler, *REBIND_FLAGS, *flags, "-o", str(target), str(REBIND_SOURCE),
                   "-ldl"]
        self.announce(" ".join(command), level=2)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return f"{compiler[0]} failed: {result.stderr.strip() or result.returncode}"
        return None


class BinaryDistribution(Distribution):
    """Machine code inside: installed as platform-specific (platlib), wheel not pure."""

    def has_ext_modules(self) -> bool:
        return True


cmdclass: dict[str, type] = {"build_py": BuildWithRebind}

if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        """A wheel holding rebind.so (machine code) is tagged for its platform.

        The shim does not depend on Python's ABI, so any Python 3 on that
        platform can use it: ``py3-none-<platform>``.
        """

        def get_tag(self) -> tuple[str, str, str]:
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    cmdclass["bdist_wheel"] = PlatformWheel

#: Optional features, one extra each; `plugins` is every plugin extra at once.
PLUGIN_EXTRAS = {
    "redis": ["redis>=4"],  # token_plugins.TokenRedis
    "jwt": ["jwcrypto>=1.4"],  # token_plugins.JWTTokenApi
    "tokenapi": ["requests>=2.20"],  # token_plugins.BaseTokenAPI, JSONTokenApi
}
EXTRAS = {
    # gunicorn's gevent worker imports `packaging` since 26.1, which then moved it
    # into gunicorn's own `gevent` extra: ask for that extra, not gunicorn alone.
    "gunicorn": ["gunicorn[gevent]>=21"],
    # Only gevent-websocket's stock gunicorn worker needs it; websockify does not import it.
    "gevent-websocket": ["gevent-websocket>=0.10.1"],
    **PLUGIN_EXTRAS,
    "plugins": sorted({req for reqs in PLUGIN_EXTRAS.values() for req in reqs}),
    "test": ["pytest>=7", "pytest-timeout", "hypothesis", "websockets>=12",
             "gunicorn[gevent]>=21", "gevent-websocket>=0.10.1", "build", "ruff", "mypy",
             *PLUGIN_EXTRAS["redis"], *PLUGIN_EXTRAS["jwt"], *PLUGIN_EXTRAS["tokenapi"],
             "prometheus_client"],
}

setup(
    name="websockify",
    version=read_version(),
    description="WebSocket-to-TCP bridge: RFC 6455 and Hixie, binary and base64, on gevent",
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="LGPL-3.0-or-later",
    python_requires=">=3.10",
    packages=find_packages(include=["websockify", "websockify.*"]),
    package_data={"websockify": ["py.typed"]},
    install_requires=["gevent>=22.10", "numpy>=1.22"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["websockify = websockify.cli:main"]},
    cmdclass=cmdclass,
    distclass=BinaryDistribution,
    zip_safe=False,
)
