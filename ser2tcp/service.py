"""The service tree: one PortService per serial port under Ser2TcpService.

``build_service(config, reactor)`` only composes objects; nothing is opened
or bound until the service starts (``twistd`` calls ``makeService`` before it
daemonizes).
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable, cast

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.interfaces import IProtocolFactory

from . import _log
from .admission import Admission, PortCount
from .config import Config, ConfigError, PortConfig, ServerConfig, StartupError
from .hub import PortHub, State
from .listeners import ListenerService, make_endpoint
from .portlog import PortLog
from .protocols import ClientFactory
from .sdnotify import Notifier
from .serial_link import DeviceClaims, SerialLink

log = _log.logger("service")

#: How long stopping waits for clients to take what was read for them.
DRAIN_TIMEOUT = 0.6
#: How long stopping then waits for serial ports to close (they were told
#: to close at once, without flushing).
STOP_TIMEOUT = 0.3

FactoryBuilder = Callable[[PortHub, ServerConfig, Any, Admission], IProtocolFactory]


def _raw_factory(hub: PortHub, server: ServerConfig, reactor: Any, admission: Admission) -> IProtocolFactory:
    return ClientFactory(hub, server, reactor, admission)


def _telnet_factory(
    hub: PortHub, server: ServerConfig, reactor: Any, admission: Admission
) -> IProtocolFactory:
    from .telnet import TelnetFactory

    return TelnetFactory(hub, server, reactor, admission)


def _tls_factory(hub: PortHub, server: ServerConfig, reactor: Any, admission: Admission) -> IProtocolFactory:
    # pyOpenSSL and cryptography weigh a dozen MiB: loaded only when used.
    from .tls import TlsFactory, certificate_options, wrap_tls

    assert server.ssl is not None
    options = certificate_options(server.ssl, server.ssl.where or f"{server.where}.ssl")
    return wrap_tls(TlsFactory(hub, server, reactor, admission), options, reactor)


#: protocol name -> how its client factory is built
FACTORIES: dict[str, FactoryBuilder] = {
    "tcp": _raw_factory,
    "socket": _raw_factory,
    "telnet": _telnet_factory,
    "ssl": _tls_factory,
}


def _abort_slow(sessions: list[Any]) -> None:
    """The stop deadline: reset the clients that have not taken their data."""
    for session in sessions:
        if not session.gone:
            log.info(
                "Client {peer}: aborted, its data not taken within {t:g} s of the stop",
                peer=session.peer,
                t=DRAIN_TIMEOUT,
            )
            session.abort("ser2tcp is stopping")


class PortService(MultiService):
    """A serial port: its hub, its device link and its listeners."""

    def __init__(self, port: PortConfig, reactor: Any, claims: DeviceClaims | None = None) -> None:
        super().__init__()
        self.config = port
        self.reactor = reactor
        self.link = SerialLink(port.serial, reactor, port_name=port.name, claims=claims)
        self.hub = PortHub(self.link, reactor, port)
        self.port_log: PortLog | None = None
        if port.log is not None:
            self.port_log = PortLog(port.log, reactor, self.hub.name)
            self.hub.taps.append(self.port_log)
        count = PortCount(port.max_connections)
        #: Each server's admission: its clients in order, for status pages.
        self.admissions: list[Admission] = []
        for server in port.servers:
            admission = Admission(server, count)
            self.admissions.append(admission)
            if server.protocol == "websocket":
                continue  # served by the HTTP servers (ser2tcp.http_service)
            factory = FACTORIES[server.protocol](self.hub, server, reactor, admission)
            ListenerService(make_endpoint(reactor, server), factory, server).setServiceParent(self)

    def startService(self) -> None:
        if self.port_log is not None:
            try:
                self.port_log.open()
            except OSError as e:
                path = self.port_log.config.path
                raise StartupError(
                    f"{self.config.where}.log.path: cannot open {path}: {e.strerror or e}"
                ) from None
        super().startService()  # listeners first: a bind failure stops the start
        self.hub.start()

    def reopen_log(self) -> None:
        """SIGUSR1: an external logrotate moved the port log away."""
        if self.port_log is not None:
            self.port_log.reopen()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()  # no new clients
        sessions = self.hub.shutdown()
        # Each client is closed in order (FIN, TLS close_notify) once it has
        # what was read for it; one that has not taken it by the deadline
        # is aborted, so that stopping never takes more than about a second.
        deadline = self.reactor.callLater(DRAIN_TIMEOUT, _abort_slow, sessions)
        yield defer.DeferredList([cast(defer.Deferred[None], s.when_gone()) for s in sessions])
        if deadline.active():
            deadline.cancel()
        # abortConnection() completes on the next reactor turn: let clients
        # see their connectionLost (and log it) before the reactor stops.
        yield task.deferLater(self.reactor, 0, lambda: None)
        closed = self.hub.wait_closed()
        closed.addTimeout(STOP_TIMEOUT, self.reactor)
        try:
            yield closed
        except defer.TimeoutError:
            log.warn("Serial {port} did not close in time", port=self.hub.name)


class Ser2TcpService(MultiService):
    """The daemon: every configured port."""

    _previous_usr1: Any = None

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._notifier = Notifier(reactor)
        claims = DeviceClaims()  # one device, one port
        for port in config.ports:
            PortService(port, reactor, claims).setServiceParent(self)
        if config.http:
            # twisted.web and prometheus_client are loaded only when used.
            from .http_service import http_listeners

            for listener in http_listeners(config, self._ports, reactor):
                listener.setServiceParent(self)

    def privilegedStartService(self) -> None:
        self._start(super().privilegedStartService)

    def startService(self) -> None:
        for warning in self.config.warnings:
            log.warn("{warning}", warning=warning)
        self._start(super().startService)
        self._notifier.ready(self.summary)
        if self.config.http:
            from .http_service import warn_if_open

            warn_if_open(self.config)
        if any(port.port_log is not None for port in self._ports()):
            self._previous_usr1 = reopen_on_signal(self._reactor, self.reopen_logs)

    def stopService(self) -> Any:
        self._notifier.stopping()
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None
        return super().stopService()

    def summary(self) -> str:
        """One line for systemd's STATUS: ports open, clients."""
        ports = self._ports()
        opened = sum(1 for p in ports if p.hub.state is State.OPEN)
        clients = sum(len(p.hub.sessions) for p in ports)
        return f"{len(ports)} port(s), {opened} open, {clients} client(s)"

    def reopen_logs(self) -> None:
        for port in self._ports():
            port.reopen_log()

    def _ports(self) -> list[PortService]:
        return [s for s in self if isinstance(s, PortService)]

    def probe(self) -> None:
        """Check before daemonizing that every listener can be bound."""
        self._start(self._probe_listeners)

    def _probe_listeners(self) -> None:
        for listener in self._listeners():
            listener.probe()

    def _start(self, start: Callable[[], object]) -> None:
        try:
            start()
        except StartupError as e:
            # Leave nothing listening: stop whatever started before the failure.
            for listener in self._listeners():
                listener.stopService()
            raise StartupError(f"{self.config.source}: {e}") from None

    def _listeners(self) -> list[ListenerService]:
        ours = [s for s in self if isinstance(s, ListenerService)]
        return [s for port in self._ports() for s in port if isinstance(s, ListenerService)] + ours


def reopen_on_signal(reactor: Any, reopen: Callable[[], None]) -> Any:
    """Call ``reopen`` from the reactor on SIGUSR1, then whatever handled it
    before (``twistd`` reopens its own log on it).  Returns the previous handler."""

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(reopen)
        if callable(previous):
            previous(signum, frame)

    previous = signal.signal(signal.SIGUSR1, handler)
    return signal.SIG_DFL if previous is None else previous


def build_service(config: Config, reactor: Any) -> Ser2TcpService:
    """Compose the daemon's services; errors name the config file."""
    try:
        return Ser2TcpService(config, reactor)
    except (ConfigError, StartupError) as e:
        raise type(e)(f"{config.source}: {e}") from None


def install_startup_error_hook() -> None:
    """Print a StartupError as its one line, not a traceback.

    ``twist`` and ``twistd`` start the service themselves and let its
    exception reach the interpreter; other exceptions keep their traceback.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, StartupError):
            print(value, file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
