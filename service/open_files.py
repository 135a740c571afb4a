"""The process's limit on open files, raised to the most the system lets it have.

Every connection a server holds is an open file, and Linux gives a process 1,024 by default
(systemd's ``DefaultLimitNOFILE=1024:524288``, a login shell's ``ulimit -n``). A gateway worker
at that limit can hold no more callers and open no socket: on the demo at 1,024 callers, it
closed 5,897-6,493 calls unanswered in 8 s and could not reach its monitor with its records; at
2,048 callers its goodput fell to a tenth (BENCHMARKS.md). The hard limit is the ceiling the
system set for this process, and raising the soft limit up to it needs no privilege (Go's
runtime has done this since 1.19). The risk Go names, ``select()`` failing past descriptor
1,023, does not apply: the event loops here wait with epoll, psycopg with poll.

Both servers call ``raise_limit`` when BentoML imports them, in its arbiter and in every worker;
the benches call it too, so their clients and the peers they start have the same room.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("gateway.open_files")

ENOUGH = 4096
"""Below this many open files a server is warned about: it can hold fewer callers at once than
the overload benches drive (2,048), with its own files besides."""


def raise_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the soft limit now.
    Processes it starts afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:  # a hard limit the kernel refuses as a soft one
            log.warning(
                "could not raise the limit on open files from %d to %d: %s", soft, hard, error
            )
    if soft != resource.RLIM_INFINITY and soft < ENOUGH:
        log.warning(
            "this process may open %d files: it cannot hold more callers than that at once "
            "(raise its hard limit: docs/operations.md, 'Open files')",
            soft,
        )
    return soft
