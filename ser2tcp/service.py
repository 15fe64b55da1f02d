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
from .config import Config, ConfigError, PortConfig, ServerConfig, StartupError, load_config
from .hub import PortHub, State
from .listeners import ListenerService, make_endpoint
from .portlog import PortLog
from .protocols import ClientFactory
from .reload import ReloadError
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

    #: What its clients are told when it stops.
    stop_reason = "ser2tcp is stopping"

    def __init__(self, port: PortConfig, reactor: Any, claims: DeviceClaims | None = None) -> None:
        super().__init__()
        self.config = port
        self.reactor = reactor
        self.link = SerialLink(port.serial, reactor, port_name=port.name, claims=claims)
        self.hub = PortHub(self.link, reactor, port)
        self.port_log = self.make_log(port)
        if self.port_log is not None:
            self.hub.taps.append(self.port_log)
        self.count = PortCount(port.max_connections)
        #: Each server's admission: its clients in order, for status pages.
        self.admissions: list[Admission] = []
        for server in port.servers:
            admission, listener = self.make_server(server)
            self.admissions.append(admission)
            if listener is not None:
                listener.setServiceParent(self)

    def make_log(self, port: PortConfig) -> PortLog | None:
        return PortLog(port.log, self.reactor, self.hub.name) if port.log is not None else None

    def make_server(self, server: ServerConfig) -> tuple[Admission, ListenerService | None]:
        """A server's admission, and its listener (None for a websocket
        server: the HTTP servers serve it, see :mod:`ser2tcp.http_service`)."""
        admission = Admission(server, self.count)
        if server.protocol == "websocket":
            return admission, None
        factory = FACTORIES[server.protocol](self.hub, server, self.reactor, admission)
        return admission, ListenerService(make_endpoint(self.reactor, server), factory, server)

    def renewed_tls(self) -> list[tuple[ListenerService, IProtocolFactory]]:
        """For each TLS listener, a factory with its certificate, key and CAs
        read again (a reload picks up renewed certificates; clients already
        connected keep their session)."""
        admissions = {a.server.place: a for a in self.admissions}
        renewed = []
        for listener in self.listeners():
            server = listener.server
            if server.protocol == "ssl" and server.place in admissions:
                factory = _tls_factory(self.hub, server, self.reactor, admissions[server.place])
                renewed.append((listener, factory))
        return renewed

    def listeners(self) -> list[ListenerService]:
        return [s for s in self if isinstance(s, ListenerService)]

    def open_log(self, port_log: PortLog | None = None) -> None:
        """Open the port log (or ``port_log``) if it is not open yet."""
        port_log = port_log or self.port_log
        if port_log is None or port_log.is_open:
            return
        try:
            port_log.open()
        except OSError as e:
            raise StartupError(
                f"{self.config.where}.log.path: cannot open {port_log.config.path}: {e.strerror or e}"
            ) from None

    def startService(self) -> None:
        self.open_log()
        super().startService()  # listeners first: a bind failure stops the start
        self.hub.start()

    def reopen_log(self) -> None:
        """SIGUSR1: an external logrotate moved the port log away."""
        if self.port_log is not None:
            self.port_log.reopen()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        # No new clients (the sockets stop accepting now and are closed in
        # the background), and the device is let go at once: a reload may
        # give it to another port in this same reactor turn.
        stopping = super().stopService()
        sessions = self.hub.shutdown(self.stop_reason)
        yield stopping
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
    """The daemon: every configured port, and the HTTP servers."""

    _previous_usr1: Any = None
    _previous_hup: Any = None
    _budgeted = False

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.started_at: float = reactor.seconds()
        self._notifier = Notifier(reactor)
        self.claims = DeviceClaims()  # one device, one port
        for port in config.ports:
            PortService(port, reactor, self.claims).setServiceParent(self)
        if config.http:
            # twisted.web and prometheus_client are loaded only when used.
            from .http_service import http_listeners

            for listener in http_listeners(config, self.ports, reactor, self.started_at, self.reload):
                listener.setServiceParent(self)

    def privilegedStartService(self) -> None:
        self._budget()
        self._start(super().privilegedStartService)

    def startService(self) -> None:
        self._budget()
        self._log_warnings()
        self._start(super().startService)
        self._notifier.ready(self.summary)
        self._previous_hup = on_signal(signal.SIGHUP, self.reactor, self.reload_on_signal)
        self._watch_logs()

    def stopService(self) -> Any:
        self._notifier.stopping()
        for signum, attr in ((signal.SIGUSR1, "_previous_usr1"), (signal.SIGHUP, "_previous_hup")):
            previous = getattr(self, attr)
            if previous is not None:
                signal.signal(signum, previous)
                setattr(self, attr, None)
        return super().stopService()

    def _budget(self) -> None:
        """Raise the descriptor limit before anything is bound or opened."""
        if not self._budgeted:
            self._budgeted = True
            from .limits import check_budget

            check_budget(self.config)

    def _log_warnings(self) -> None:
        for warning in self.config.warnings:
            log.warn("{warning}", warning=warning)
        if self.config.http:
            from .http_service import warn_if_open

            warn_if_open(self.config)

    def _watch_logs(self) -> None:
        """SIGUSR1 reopens the port logs, once there are any."""
        if self._previous_usr1 is None and any(p.port_log is not None for p in self.ports()):
            self._previous_usr1 = on_signal(signal.SIGUSR1, self.reactor, self.reopen_logs, chain=True)

    def summary(self) -> str:
        """One line for systemd's STATUS: ports open, clients."""
        ports = self.ports()
        opened = sum(1 for p in ports if p.hub.state is State.OPEN)
        clients = sum(len(p.hub.sessions) for p in ports)
        return f"{len(ports)} port(s), {opened} open, {clients} client(s)"

    def reopen_logs(self) -> None:
        for port in self.ports():
            port.reopen_log()

    # reload

    def reload_on_signal(self) -> None:
        """SIGHUP: reload; a failure is logged and changes nothing."""
        try:
            self.reload()
        except ReloadError:
            pass  # logged

    def reload(self) -> str:
        """Read the config file again and put it in force with the least
        disruption (see :mod:`ser2tcp.reload`).  Returns the summary, or
        raises :class:`ReloadError` (logged) with the running config whole."""
        from .reload import Reload

        source = self.config.source
        if not self.running:
            raise ReloadError(f"{source}: ser2tcp is not running (starting or stopping)")
        self._notifier.reloading()
        try:
            try:
                change = Reload(self, load_config(source))
                change.prepare()
            except (ConfigError, StartupError) as e:
                text = str(e) if str(e).startswith(source) else f"{source}: {e}"
                log.error("Reload failed, the running config stays: {text}", text=text)
                raise ReloadError(text) from None
            summary = change.commit()
            self.config = change.config
            self._log_warnings()
            self._watch_logs()
            self.reopen_logs()
            log.info("Reloaded {source}: {summary}", source=source, summary=summary)
            return summary
        finally:
            self._notifier.ready(self.summary)

    def put_in_order(self, config: Config) -> None:
        """Children in the config's order (status pages list them so)."""
        order = {port.name: i for i, port in enumerate(config.ports)}
        self.services.sort(
            key=lambda s: order.get(s.config.name, -1) if isinstance(s, PortService) else len(order)
        )

    # the tree

    def ports(self) -> list[PortService]:
        return [s for s in self if isinstance(s, PortService)]

    def http_listeners(self) -> list[ListenerService]:
        return [s for s in self if isinstance(s, ListenerService)]

    def listeners(self) -> list[ListenerService]:
        """Every listener: the ports' and the HTTP servers'."""
        return [s for port in self.ports() for s in port.listeners()] + self.http_listeners()

    def probe(self) -> None:
        """Check before daemonizing that every listener can be bound."""
        self._start(self._probe_listeners)

    def _probe_listeners(self) -> None:
        for listener in self.listeners():
            listener.probe()

    def _start(self, start: Callable[[], object]) -> None:
        try:
            start()
        except StartupError as e:
            # Leave nothing listening: stop whatever started before the failure.
            for listener in self.listeners():
                listener.stopService()
            raise StartupError(f"{self.config.source}: {e}") from None


def on_signal(signum: int, reactor: Any, call: Callable[[], None], chain: bool = False) -> Any:
    """Call ``call`` from the reactor on ``signum`` (then, with ``chain``,
    whatever handled it before: ``twistd`` reopens its own log on SIGUSR1).
    Returns the previous handler, to put back."""

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(call)
        if chain and callable(previous):
            previous(signum, frame)

    previous = signal.signal(signum, handler)
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
