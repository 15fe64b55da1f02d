"""Log verbosity for the ``ser2tcp`` namespace.

``twistd`` installs its log observer without a level filter and ``twist``
filters only by its own ``--log-level``, so ser2tcp's ``-v``/``-vv`` flags
need a filter of their own.  Every ser2tcp logger publishes through
:data:`observer`, which drops events below the chosen level before they reach
the global log publisher.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from zope.interface import implementer

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


@implementer(ILogObserver)
class AcceptTrouble:
    """Turns Twisted's notes about connections it could not accept into
    WARNINGs that count every one of them.

    Twisted's accept loop reports running out of descriptors at INFO, in its
    own namespace, one event per refused connection ("EMFILE recovery:
    Closed socket from ..."), or per failed accept when no descriptor could
    be freed.  An operator needs them as warnings, at most one line a second
    however many there are, and with every count reported: what arrives in
    the quiet second is reported by one timer, armed by that event (no timer
    runs while nothing happens)."""

    #: Seconds between two warnings.
    INTERVAL = 1.0

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock
        self._last = -self.INTERVAL
        self._refused = 0
        self._failed = 0
        self._timer: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        fmt = event.get("log_format") or ""
        if fmt.startswith("EMFILE recovery: Closed socket"):
            self._refused += 1
        elif fmt.startswith("Could not accept new connection"):
            self._failed += 1
        else:
            return
        if self._timer is not None:
            return  # reported when it fires
        clock = self._get_clock()
        wait = self._last + self.INTERVAL - clock.seconds()
        if wait <= 0:
            self.report()
        else:
            self._timer = clock.callLater(wait, self.report)

    def report(self) -> None:
        self._timer = None
        self._last = self._get_clock().seconds()
        refused, self._refused = self._refused, 0
        failed, self._failed = self._failed, 0
        if refused:
            _fd_log.warn(
                "Out of file descriptors: {n} new connection(s) refused "
                "(raise the limit: ulimit -n, LimitNOFILE=)",
                n=refused,
            )
        if failed:
            _fd_log.warn(
                "Out of file descriptors (or socket memory): accepting a new connection failed "
                "{n} time(s); it waits in the listen queue (raise the limit: ulimit -n, LimitNOFILE=)",
                n=failed,
            )

    def _get_clock(self) -> Any:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock


_accept_trouble = AcceptTrouble()


def watch_accept_errors() -> None:
    """Turn Twisted's notes about refused connections into WARNINGs."""
    globalLogPublisher.addObserver(_accept_trouble)  # idempotent
