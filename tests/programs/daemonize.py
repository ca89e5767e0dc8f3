"""Run a command as a daemon, as TigerVNC's vncserver runs Xtigervnc.

The wrapper forks, the child starts a new session and forks again, the grandchild
execs the command; the wrapper itself exits 0 at once.  The daemon is therefore
no child of whoever started the wrapper (without a subreaper it would belong to
init).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    if os.fork():
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
