"""Install websockify; builds rebind.so (the LD_PRELOAD shim) into the package.

rebind.so is a plain shared library loaded by LD_PRELOAD, not a Python extension,
so it is compiled by a small build step of its own and shipped as package data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
REBIND_SOURCE = HERE / "rebind" / "rebind.c"


class BuildWithRebind(build_py):
    """Compile rebind/rebind.c into websockify/rebind.so next to the Python files."""

    def run(self) -> None:
        super().run()
        if not REBIND_SOURCE.exists():
            raise SystemExit(f"websockify: {REBIND_SOURCE} is missing; rebind.so cannot be built")
        target = Path(self.build_lib) / "websockify" / "rebind.so"
        target.parent.mkdir(parents=True, exist_ok=True)
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit("websockify: a C compiler (cc) is needed to build rebind.so")
        subprocess.run(
            [compiler, "-O2", "-Wall", "-Wextra", "-fPIC", "-shared",
             "-o", str(target), str(REBIND_SOURCE), "-ldl"],
            check=True,
        )


setup(
    name="websockify",
    version="0.14.0",
    description="WebSocket-to-TCP bridge: RFC 6455 and Hixie, binary and base64, on gevent",
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="LGPL-3.0-or-later",
    python_requires=">=3.10",
    packages=find_packages(include=["websockify", "websockify.*"]),
    package_data={"websockify": ["rebind.so", "py.typed"]},
    install_requires=["gevent>=22.10", "gevent-websocket>=0.10.1", "numpy>=1.22"],
    extras_require={
        "gunicorn": ["gunicorn>=21"],
        "redis": ["redis>=4"],
        "jwt": ["jwcrypto>=1.4"],
        "tokenapi": ["requests>=2.20"],
        "plugins": ["redis>=4", "jwcrypto>=1.4", "requests>=2.20"],
        "test": ["pytest>=7", "pytest-timeout", "hypothesis", "websockets>=12",
                 "gunicorn>=21", "ruff", "mypy", "redis>=4", "jwcrypto>=1.4",
                 "requests>=2.20"],
    },
    entry_points={"console_scripts": ["websockify = websockify.cli:main"]},
    cmdclass={"build_py": BuildWithRebind},
    zip_safe=False,
)
