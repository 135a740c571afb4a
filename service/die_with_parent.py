"""Run a command that ends when the process that started it dies, however it dies.

``python service/die_with_parent.py PARENT_PID COMMAND...`` asks Linux to send it SIGTERM when its
parent dies (``PR_SET_PDEATHSIG``, which ``exec`` keeps), then becomes COMMAND. It is run by its
path and needs only the standard library, so it starts from any directory. service/launch.py
starts every server this way: ``bentoml serve`` runs in a session of its own, so that ``stop`` can
end its arbiter and workers together, and without this a server outlived a demo or a test run killed
by SIGKILL or a closed terminal, holding its ports until someone found and killed it.

Linux sends the signal when the *thread* that started the child ends, so servers are started from a
thread that lives as long as they should (the main thread, everywhere in this project).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
"""prctl's option (linux/prctl.h): the signal this process gets when its parent dies."""


def main(argv: list[str]) -> None:
    """Tie this process to ``PARENT_PID`` (``argv[0]``), then become the command after it."""
    parent, command = int(argv[0]), argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request was made: nobody would be told
        sys.exit(f"the process that started {command[0]} ({parent}) has already ended")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
