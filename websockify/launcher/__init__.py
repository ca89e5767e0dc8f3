"""The wrapped program: ``websockify [opts] PORT -- COMMAND ARGS…``.

COMMAND runs with ``rebind.so`` preloaded (``rebind/rebind.c``), which moves the
program's one listener (the ``--wrap-port`` one, or the first) to a free loopback
port and reports it in a file, so the target is read, never guessed.  Four parts,
one job each:

* ``process_tree``: spawn, become a child subreaper, reap, walk, signal and stop
  the program's processes, wait on pidfds;
* ``listener_report``: the report file the shim writes, created and read back;
* ``wrap_policy``: exit, ignore or respawn (with back-off), and which exit
  status counts, as plain decisions without I/O;
* ``program``: ``WrappedProgram``, which ties them together for the server.
"""

from websockify.launcher.program import PACKAGED_REBIND, WrappedProgram, find_rebind

__all__ = ["PACKAGED_REBIND", "WrappedProgram", "find_rebind"]
