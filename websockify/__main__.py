"""``python -m websockify``: the same as the ``websockify`` command."""

from websockify.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
