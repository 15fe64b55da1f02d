"""Log verbosity for the ``ser2tcp`` namespace.

``twistd`` installs its log observer without a level filter and ``twist``
filters only by its own ``--log-level``, so ser2tcp's ``-v``/``-vv`` flags
need a filter of their own.  Every ser2tcp logger publishes through
:data:`observer`, which drops events below the chosen level before they reach
the global log publisher.
"""

from __future__ import annotations

import time

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from zope.interface import provider

NAMESPACE = "ser2tcp"

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
_predicate.setLogLevelForNamespace(NAMESPACE, LogLevel.warn)
observer = FilteringLogObserver(globalLogPublisher, [_predicate])

#: Whether data of both directions is logged (``-vv``).  Checked before an
#: event is built, because building one per chunk costs even when filtered.
trace_data = False
#: Whether INFO events pass (``-v``): checked on paths that run for every
#: connection, for the same reason.
info = False

LEVELS = {0: LogLevel.warn, 1: LogLevel.info}


def logger(name: str) -> Logger:
    """A logger in the ``ser2tcp.<name>`` namespace, behind our filter."""
    return Logger(namespace=f"{NAMESPACE}.{name}", observer=observer)


def set_verbosity(verbose: int) -> None:
    """0: WARNING, 1: INFO, 2 or more: DEBUG with the data of both directions."""
    global trace_data, info
    level = LEVELS.get(verbose, LogLevel.debug)
    _predicate.setLogLevelForNamespace(NAMESPACE, level)
    trace_data = level is LogLevel.debug
    info = level is not LogLevel.warn


_fd_log = logger("accept")
_last_fd_warning = 0.0
_fd_refused = 0

#: Twisted's accept loop reports running out of descriptors at INFO, in its
#: own namespace; an operator needs it as a warning.
_ACCEPT_TROUBLE = ("EMFILE recovery: Closed socket", "Could not accept new connection")


@provider(ILogObserver)
def _watch_accept_errors(event: LogEvent) -> None:
    global _last_fd_warning, _fd_refused
    fmt = event.get("log_format") or ""
    if not fmt.startswith(_ACCEPT_TROUBLE):
        return
    _fd_refused += 1
    now = time.monotonic()
    if now - _last_fd_warning < 1.0:
        return  # at most one line a second, however many are refused
    _last_fd_warning = now
    refused, _fd_refused = _fd_refused, 0
    _fd_log.warn(
        "Out of file descriptors (or socket memory): {n} new connection(s) refused "
        "(raise the limit: ulimit -n, LimitNOFILE=)",
        n=refused,
    )


def watch_accept_errors() -> None:
    """Turn Twisted's notes about refused connections into WARNINGs."""
    globalLogPublisher.addObserver(_watch_accept_errors)  # idempotent
