"""The ``ser2tcp`` command, with the original ser2tcp's flags.

It runs the same service tree as the twistd plugin, in the foreground, and
logs to stderr as the original did: ``I: Client connected: ...``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

from . import __version__, _log
from .config import Config, ConfigError, StartupError, load_config
from .usb import describe_usb_devices


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ser2tcp",
        description=f"ser2tcp {__version__}: share serial ports over TCP, TELNET, TLS and Unix sockets",
    )
    parser.add_argument("-V", "--version", action="version", version=f"ser2tcp {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: INFO (clients, serial open/close), -vv: DEBUG with the data of both directions",
    )
    parser.add_argument("-u", "--usb", action="store_true", help="list USB serial devices and exit")
    parser.add_argument(
        "-c", "--config", action="append", help="JSON config file (several with --check: one per daemon)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config as a start would (certificates, keys, log directories), "
        "print OK or the one error, and exit",
    )
    parser.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password (no echo on a terminal, else one line of standard input) and print "
        "its hash for the config's users",
    )
    args = parser.parse_args(argv)
    if args.usb or args.hash_password:
        return args
    if args.config is None:
        parser.error("the following arguments are required: -c/--config")
    if not all(args.config):
        parser.error("-c/--config: the path is empty")
    args.configs, args.config = args.config, args.config[0]
    if len(args.configs) > 1 and not args.check:
        parser.error("one config per daemon: several -c only with --check (run an instance per config)")
    return args


def hash_password(stdin: TextIO) -> int:
    """``--hash-password``: a salted scrypt hash of one password."""
    from . import passwords

    if stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("ser2tcp: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        print("ser2tcp: empty password", file=sys.stderr)
        return 1
    print(passwords.hash_password(password))
    return 0


#: syslog priorities of log levels, as journald reads them from a line's
#: ``<N>`` prefix (sd-daemon(3)).
PRIORITIES = {
    LogLevel.critical: 2,
    LogLevel.error: 3,
    LogLevel.warn: 4,
    LogLevel.info: 6,
    LogLevel.debug: 7,
}


def goes_to_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is journald's: systemd names the device and inode
    of the stream it connected in ``$JOURNAL_STREAM``."""
    try:
        device, inode = (int(n) for n in environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


@implementer(ILogObserver)
class _LineObserver:
    """``L: message`` lines, L being the level's first letter, as the
    original; for journald, ``<N>message``: the priority is the line's, and
    journald adds the time (a timestamp of ours would be there twice)."""

    def __init__(self, stream: TextIO, journal: bool = False) -> None:
        self._stream = stream
        self._journal = journal

    def __call__(self, event: LogEvent) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback().rstrip()}"
        level = event.get("log_level", LogLevel.info)
        if self._journal:
            prefix = f"<{PRIORITIES.get(level, 6)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
            self._stream.write(text + "\n")
        else:
            self._stream.write(f"{level.name[0].upper()}: {text}\n")
        self._stream.flush()


def stderr_observer(stream: TextIO, journal: bool = False) -> ILogObserver:
    """``L: message`` lines on ``stream``, as the original (``<N>message``
    for journald)."""
    # Twisted's own chatter (factories starting, ...) only from WARNING up;
    # ser2tcp's events were filtered by -v already.
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    predicate.setLogLevelForNamespace(_log.NAMESPACE, LogLevel.debug)
    return FilteringLogObserver(_LineObserver(stream, journal), [predicate])


def _may_need_tls(config: Config) -> bool:
    """TLS servers, HTTP servers (TLS, or endpoint strings), or endpoint
    strings (which may say ``ssl:``)."""
    if config.http:
        return True
    return any(
        s.protocol == "ssl" or (s.endpoint is not None and s.protocol != "websocket")
        for p in config.ports
        for s in p.servers
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.usb:
        sys.stdout.write(describe_usb_devices())
        return 0
    if args.hash_password:
        return hash_password(sys.stdin)
    if args.check:
        from .check import report_check

        return report_check(args.configs)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    _log.set_verbosity(args.verbose)
    _log.watch_accept_errors()
    observer = stderr_observer(sys.stderr, goes_to_journal(sys.stderr))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    if not _may_need_tls(config):
        # Twisted's TCP module loads pyOpenSSL and cryptography (about 13 MiB
        # of memory) whenever they are installed; without TLS nothing uses them.
        sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]

    from .reactor import install_if_possible

    install_if_possible()
    from twisted.internet import reactor

    from .service import build_service

    try:
        service = build_service(config, reactor)
        service.privilegedStartService()
        service.startService()
    except (ConfigError, StartupError) as e:
        print(e, file=sys.stderr)
        # Let the listeners that did start finish closing (a Unix socket's
        # file is removed one reactor turn after stopListening).
        reactor.callLater(0, reactor.stop)
        reactor.run()
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
