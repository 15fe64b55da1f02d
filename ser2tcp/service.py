"""The service tree: one PortService per serial port under Ser2TcpService.

``build_service(config, reactor)`` only composes objects; nothing is opened
or bound until the service starts (``twistd`` calls ``makeService`` before it
daemonizes).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.interfaces import IProtocolFactory

from . import _log
from .config import Config, ConfigError, PortConfig, ServerConfig, StartupError
from .hub import PortHub
from .listeners import ListenerService, make_endpoint
from .protocols import ClientFactory
from .serial_link import SerialLink

log = _log.logger("service")

#: How long stopping waits for serial ports to close.
STOP_TIMEOUT = 0.8

FactoryBuilder = Callable[[PortHub, ServerConfig, Any], IProtocolFactory]


def _raw_factory(hub: PortHub, server: ServerConfig, reactor: Any) -> IProtocolFactory:
    return ClientFactory(hub, server, reactor)


def _telnet_factory(hub: PortHub, server: ServerConfig, reactor: Any) -> IProtocolFactory:
    from .telnet import TelnetFactory

    return TelnetFactory(hub, server, reactor)


def _tls_factory(hub: PortHub, server: ServerConfig, reactor: Any) -> IProtocolFactory:
    # pyOpenSSL and cryptography weigh a dozen MiB: loaded only when used.
    from .tls import TlsFactory, certificate_options, wrap_tls

    assert server.ssl is not None
    options = certificate_options(server.ssl, f"{server.where}.ssl")
    return wrap_tls(TlsFactory(hub, server, reactor), options, reactor)


#: protocol name -> how its client factory is built
FACTORIES: dict[str, FactoryBuilder] = {
    "tcp": _raw_factory,
    "socket": _raw_factory,
    "telnet": _telnet_factory,
    "ssl": _tls_factory,
}


class PortService(MultiService):
    """A serial port: its hub, its device link and its listeners."""

    def __init__(self, port: PortConfig, reactor: Any) -> None:
        super().__init__()
        self.config = port
        self.reactor = reactor
        self.link = SerialLink(port.serial, reactor)
        self.hub = PortHub(self.link, reactor)
        for server in port.servers:
            factory = FACTORIES[server.protocol](self.hub, server, reactor)
            ListenerService(make_endpoint(reactor, server), factory, server).setServiceParent(self)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield super().stopService()  # no new clients
        self.hub.shutdown()
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

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        for port in config.ports:
            PortService(port, reactor).setServiceParent(self)

    def privilegedStartService(self) -> None:
        self._start(super().privilegedStartService)

    def startService(self) -> None:
        for warning in self.config.warnings:
            log.warn("{warning}", warning=warning)
        self._start(super().startService)

    def _start(self, start: Callable[[], None]) -> None:
        try:
            start()
        except StartupError as e:
            # Leave nothing listening: stop whatever started before the failure.
            for listener in self._listeners():
                listener.stopService()
            raise StartupError(f"{self.config.source}: {e}") from None

    def _listeners(self) -> list[ListenerService]:
        return [s for port in self for s in port if isinstance(s, ListenerService)]


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
