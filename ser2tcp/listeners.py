"""Listeners: a server's config becomes a Twisted endpoint that is listening.

Every listener is built from an endpoint string, either the user's own
(``"endpoint": "tcp6:7000:interface=\\:\\:1"``, ``systemd:...``) or one made
from ``address`` and ``port`` with every value quoted.  TLS is not a kind of
endpoint here but a wrapper around the factory, so it works on any stream
endpoint and can require client certificates, which the ``ssl:`` string
cannot express.

Twisted's ``StreamServerEndpointService`` only logs a failure to listen and
keeps running; :class:`ListenerService` makes it fail the start instead.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _log
from .config import ConfigError, ServerConfig, StartupError

log = _log.logger("listener")

#: Pending connections the kernel may hold: bursts of clients must not wait
#: for SYN retransmissions (the original ser2tcp used 1).
BACKLOG = 1024


def resolve_address(address: str, where: str) -> str:
    """The IP address to bind for ``address`` ("" means every IPv4 address)."""
    if address in ("", "0.0.0.0", "*"):
        return "0.0.0.0"
    try:
        infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"{where}.address: cannot resolve {address!r}: {reason}") from None
    return str(infos[0][4][0])


def endpoint_string(server: ServerConfig) -> str:
    """The endpoint description of a server (what ``endpoint`` would say)."""
    if server.endpoint is not None:
        return server.endpoint
    quote = endpoints.quoteStringArgument
    if server.protocol == "socket":
        mode = server.mode if server.mode is not None else 0o666 & ~current_umask()
        return f"unix:address={quote(str(server.address))}:mode={mode:o}:lockfile=0:backlog={BACKLOG}"
    interface = resolve_address(str(server.address), server.where)
    return f"tcp:port={server.port}:interface={quote(interface)}:backlog={BACKLOG}"


def current_umask() -> int:
    """The process umask, read without changing it where the kernel tells.

    Twisted chmods every Unix socket it binds (0666 unless told otherwise),
    which would ignore ``UMask=`` and ``umask 077``: without a ``mode`` the
    socket must get what the umask gives a new file."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other way to read it: set and put back at once
    os.umask(mask)
    return mask


def clear_stale_socket(path: str) -> None:
    """Make room for a Unix socket at ``path``, or say why not.

    A socket file nobody listens on (left by a crash) is removed.  A live
    socket belongs to another process, and anything that is not a socket is
    the user's: neither is ever deleted.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise StartupError(f"cannot use {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a socket"
        raise StartupError(f"{path} exists and is {kind}; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)  # stale: nobody is listening
        except OSError as e:
            raise StartupError(f"cannot remove the stale socket {path}: {e.strerror}") from None
        return
    except OSError as e:
        raise StartupError(f"cannot use {path}: {e.strerror or e}") from None
    finally:
        probe.close()
    raise StartupError(f"{path} is in use by another process")


def make_endpoint(reactor: Any, server: ServerConfig) -> IStreamServerEndpoint:
    description = endpoint_string(server)
    try:
        return cast(IStreamServerEndpoint, endpoints.serverFromString(reactor, description))
    except IndexError:
        # Twisted's systemd: endpoint finds sockets by LISTEN_FDNAMES only.
        return systemd_by_index(reactor, description, server.where)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{server.where}.endpoint: invalid endpoint {description!r}: {e}") from None


def systemd_by_index(reactor: Any, description: str, where: str) -> IStreamServerEndpoint:
    """``systemd:domain=INET:index=N`` when systemd passed sockets without
    names (``systemd-socket-activate`` without ``--fdname``).

    Twisted finds passed sockets by ``$LISTEN_FDNAMES`` only, and removes
    ``$LISTEN_FDS`` from the environment as it reads it; the sockets are
    still there, from descriptor 3 on: descriptor 3 + N is taken if it is a
    listening socket of that family, else one line says there is none."""
    args = dict(part.split("=", 1) for part in description.split(":")[1:] if "=" in part)
    index = int(args.get("index", "0"))
    family = getattr(socket, "AF_" + args.get("domain", "INET").upper(), None)
    fd = 3 + index
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            same_family = sock.family == family
    except OSError:
        listening = same_family = False
    if not (listening and same_family):
        raise ConfigError(
            f"{where}.endpoint: {description}: systemd passed no listening socket number {index}; "
            "start ser2tcp from a .socket unit or systemd-socket-activate"
        )
    return endpoints.AdoptedStreamServerEndpoint(reactor, fd, family)


@implementer(IProtocolFactory)
class Switch:
    """The factory a listening socket holds: it hands each connection to
    the factory of the config in force, so that a reload can change what a
    socket serves without closing it (no moment where the place is free,
    and no bind that can fail)."""

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory = factory

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        return self.factory.buildProtocol(addr)

    def switch(self, factory: IProtocolFactory, listening: bool) -> None:
        """Serve new connections with ``factory`` from now on."""
        old, self.factory = self.factory, factory
        if listening:
            factory.doStart()
            old.doStop()


class ListenerService(Service):
    """Listens on one endpoint while running; a failure to listen fails the start."""

    port: IListeningPort | None = None

    def __init__(
        self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, server: ServerConfig
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.switch = Switch(factory)
        self.server = server

    def listen(self) -> None:
        """Bind now (a reload binds its new places before changing anything)."""
        self._listen()

    def adopt(self, old: ListenerService) -> None:
        """Take over ``old``'s listening socket (the same place in a reloaded
        config): new connections get this listener's factory, the socket
        stays open, and ``old`` no longer closes it when it stops."""
        self.port, old.port = old.port, None
        old.switch.switch(self.factory, listening=self.port is not None)
        self.switch = old.switch
        server = self.server
        if server.protocol == "socket" and server.endpoint is None and server.mode != old.server.mode:
            mode = server.mode if server.mode is not None else 0o666 & ~current_umask()
            try:
                os.chmod(str(server.address), mode)
            except OSError as e:
                log.warn("{where}: cannot chmod {path}: {e}", where=server.where, path=server.address, e=e)

    def privilegedStartService(self) -> None:
        # twistd binds here, before dropping privileges; twist only calls
        # startService, which listens if this did not.
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        self._listen()
        super().startService()

    def probe(self) -> None:
        """Fail now, with the one line, if listening will surely fail.

        ``twistd`` binds only after it has daemonized, and then shows the
        parent only 100 bytes of the error; probing before it forks lets the
        user see the whole line.  It binds a socket and closes it at once;
        endpoint strings are the user's own and are not probed."""
        server = self.server
        if server.endpoint is not None:
            return
        if server.protocol == "socket":
            self._clear_stale_socket()
            return
        host = resolve_address(str(server.address), server.where)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted binds
            try:
                probe.bind((host, server.port))
            except OSError as e:
                raise StartupError(f"{server.where}: cannot listen on {server.label}: {e.strerror}") from None

    def _clear_stale_socket(self) -> None:
        server = self.server
        try:
            clear_stale_socket(str(server.address))
        except StartupError as e:
            raise StartupError(f"{server.where}.address: {e}") from None

    def _listen(self) -> None:
        if self.port is not None:
            return
        server = self.server
        if server.protocol == "socket" and server.endpoint is None:
            self._clear_stale_socket()
        result: list[Any] = []
        self.endpoint.listen(self.switch).addBoth(result.append)
        if not result:
            raise StartupError(f"{self.server.where}: {self.server.label}: listening did not complete")
        if isinstance(result[0], Failure):
            reason = result[0].value
            text = getattr(reason, "socketError", None) or reason
            text = getattr(text, "strerror", None) or str(text)
            raise StartupError(f"{self.server.where}: cannot listen on {self.server.label}: {text}")
        self.port = result[0]
        log.info("Listening: {label}", label=self.server.label)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
