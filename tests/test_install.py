"""Installing websockify as users do, each time into a fresh virtualenv.

- ``pip install '.[gunicorn]'`` and the gunicorn command, both taken from the README
  as written: the source install builds rebind.so, and the deployment serves.
- ``pip install dist/*.whl``: a wheel tagged for this platform, carrying rebind.so;
  wrap mode works with no setting at all.
- ``pip install dist/*.tar.gz`` on a machine without a C compiler: it installs
  anyway, relays, and wrap mode says the shim is missing; ``--rebind FILE`` works.

Every install is checked by running both ``websockify`` and ``python -m
websockify`` from outside the source tree, so nothing of the tree can be picked up
by mistake.  The wheel and the sdist are built once, by ``python -m build`` (the
wheel from the sdist, so the sdist is known to be complete).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.launcher_support import echo_server, ws_roundtrip
from tests.support import REPO, TIMEOUT, TcpServer, Websockify, wait_until
from websockify import __version__

pytestmark = pytest.mark.slow

#: pip downloads gevent and numpy on a cold cache.
INSTALL_TIMEOUT = 600
SOURCE_FILES = ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in")
SOURCE_DIRS = ("websockify", "rebind")
GUNICORN_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the source without anything built (no rebind.so, no egg-info)."""
    destination = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info", "build")
    for name in SOURCE_FILES:
        shutil.copy(REPO / name, destination / name)
    for directory in SOURCE_DIRS:
        shutil.copytree(REPO / directory, destination / directory, ignore=ignore)
    return destination


@pytest.fixture(scope="module")
def dists(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built as a release is: ``python -m build``."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(source)],
                   check=True, timeout=INSTALL_TIMEOUT, capture_output=True)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def fresh_venv(path: Path) -> Path:
    """A new virtualenv at ``path``; returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin"


def pip_install(bin_dir: Path, *args: str, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> str:
    """``pip install ARGS`` in that venv; returns pip's output (verbose, for warnings)."""
    result = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-v", "--disable-pip-version-check",
         *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def assert_both_commands_relay(bin_dir: Path, tmp_path: Path, target: TcpServer) -> None:
    """``websockify`` and ``python -m websockify`` of that venv each relay a message."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    version = subprocess.run([str(bin_dir / "websockify"), "--version"], cwd=elsewhere,
                             capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip() == f"websockify {__version__}"
    commands = ([str(bin_dir / "websockify")], [str(bin_dir / "python"), "-m", "websockify"])
    for number, command in enumerate(commands):
        server = Websockify(["127.0.0.1:0", f"127.0.0.1:{target.port}"],
                            tmp_path / f"relay-{number}.log", program=command, cwd=elsewhere)
        try:
            assert ws_roundtrip(server.port, b"installed") == b"installed"
        finally:
            assert server.stop() == 0, server.log()


def assert_wrap_mode_works(bin_dir: Path, tmp_path: Path, *options: str) -> None:
    """The installed websockify wraps a program that listens on its own fixed port."""
    server = Websockify(["127.0.0.1:0", *options, "--", *echo_server("--port", "5901")],
                        tmp_path / "wrap.log", program=[str(bin_dir / "websockify")],
                        cwd=tmp_path, env={"WEBSOCKIFY_REBIND": ""})
    try:
        assert ws_roundtrip(server.port, b"wrapped") == b"wrapped"
    finally:
        assert server.stop() == 0, server.log()


def installed_package(bin_dir: Path, cwd: Path) -> Path:
    return Path(subprocess.run(
        [str(bin_dir / "python"), "-c",
         "import websockify, pathlib; print(pathlib.Path(websockify.__file__).parent)"],
        cwd=cwd, capture_output=True, text=True, check=True, timeout=60).stdout.strip())


def platform_tag() -> str:
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def test_wheel_is_tagged_for_its_platform_and_sdist_holds_only_source(
        dists: dict[str, Path]) -> None:
    assert dists["wheel"].name == f"websockify-{__version__}-py3-none-{platform_tag()}.whl"
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        assert wheel.read("websockify/rebind.so")[:4] == b"\x7fELF"
        info = f"websockify-{__version__}.dist-info"
        assert "Root-Is-Purelib: false" in wheel.read(f"{info}/WHEEL").decode()
        metadata = wheel.read(f"{info}/METADATA").decode()
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.MULTILINE)
    unconditional = sorted(r.split(">")[0] for r in requires if "extra ==" not in r)
    assert unconditional == ["gevent", "numpy"]
    extras = set(re.findall(r"^Provides-Extra: (.+)$", metadata, re.MULTILINE))
    assert {"gunicorn", "gevent-websocket", "redis", "jwt", "tokenapi", "plugins"} <= extras
    assert 'gunicorn[gevent]>=21; extra == "gunicorn"' in requires
    with tarfile.open(dists["sdist"]) as sdist:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in sdist.getnames()}
    assert {"rebind/rebind.c", "setup.py", "websockify/__init__.py", "README.md"} <= names
    assert not [n for n in names if n.endswith(".so")]


def test_wheel_install_relays_and_wraps_with_its_shim(
        dists: dict[str, Path], tmp_path: Path, echo_target: TcpServer) -> None:
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, str(dists["wheel"]))
    package = installed_package(bin_dir, tmp_path)
    assert package.is_relative_to(tmp_path / "venv"), package
    assert (package / "rebind.so").is_file()
    assert_both_commands_relay(bin_dir, tmp_path, echo_target)
    assert_wrap_mode_works(bin_dir, tmp_path)


def test_sdist_installs_without_a_compiler_and_wrap_mode_says_what_is_missing(
        dists: dict[str, Path], tmp_path: Path, echo_target: TcpServer,
        rebind: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv")
    # Only the venv on PATH and no $CC: no C compiler can be found.
    no_compiler = {k: v for k, v in os.environ.items() if k != "CC"}
    no_compiler["PATH"] = str(bin_dir)
    output = pip_install(bin_dir, str(dists["sdist"]), env=no_compiler)
    assert "rebind.so not built (no C compiler found" in output
    assert not (installed_package(bin_dir, tmp_path) / "rebind.so").exists()
    assert_both_commands_relay(bin_dir, tmp_path, echo_target)

    wrap = subprocess.run(
        [str(bin_dir / "websockify"), "127.0.0.1:0", "--", *echo_server("--port", "5901")],
        cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT * 3,
        env=dict(os.environ, WEBSOCKIFY_REBIND=""))
    assert wrap.returncode == 3, wrap.stderr  # a start-up failure (errors.EXIT_STARTUP_FAILURE)
    assert "rebind.so shim is missing" in wrap.stderr
    assert "--rebind FILE" in wrap.stderr
    assert_wrap_mode_works(bin_dir, tmp_path, "--rebind", str(rebind))


def readme_block(heading: str) -> str:
    """The first ```sh block after ``heading`` in the README."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no sh block under {heading!r}"
    return match.group(1)


@pytest.fixture
def readme_gunicorn(tmp_path: Path, source: Path,
                    echo_target: TcpServer) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The README's gunicorn commands run by a shell in the source directory, in a
    fresh venv; only the target and the listening port are changed (to the test's
    echo server and port 0)."""
    script = readme_block("## Deploying under gunicorn")
    assert "pip install '.[gunicorn]'" in script and "localhost:5900" in script
    script = script.replace("localhost:5900", f"127.0.0.1:{echo_target.port}")
    script = re.sub(r"-b 127\.0\.0\.1:\d+", "-b 127.0.0.1:0", script)
    bin_dir = fresh_venv(tmp_path / "venv")
    log = tmp_path / "readme.log"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("WEBSOCKIFY_ARGS", None)
    with open(log, "wb") as out:
        shell = subprocess.Popen(["bash", "-euc", script], cwd=source, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield shell, log
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)
            try:
                shell.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(shell.pid, signal.SIGKILL)
                shell.wait(TIMEOUT)


def test_readme_gunicorn_commands_as_written_deploy_the_relay(
        readme_gunicorn: tuple[subprocess.Popen[bytes], Path], tmp_path: Path,
        echo_target: TcpServer) -> None:
    shell, log = readme_gunicorn
    deadline = INSTALL_TIMEOUT + TIMEOUT
    def booted() -> bool:
        text = log.read_text(errors="replace")
        assert shell.poll() is None, text
        return bool(GUNICORN_LISTENING.search(text)) and "Booting worker" in text

    wait_until(booted, "gunicorn to listen", timeout=deadline)
    match = GUNICORN_LISTENING.search(log.read_text())
    assert match is not None
    port = int(match.group(1))
    assert ws_roundtrip(port, b"through gunicorn") == b"through gunicorn"
    # The same `pip install .` gave a working command line, shim included.
    bin_dir = tmp_path / "venv" / "bin"
    assert_both_commands_relay(bin_dir, tmp_path, echo_target)
    assert_wrap_mode_works(bin_dir, tmp_path)
