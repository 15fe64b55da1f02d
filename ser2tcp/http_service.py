"""The HTTP servers of a config, as listeners beside the ports' ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IProtocolFactory

from . import _log
from .config import Config
from .listeners import ListenerService, make_endpoint
from .status import PortView
from .web import Page, WebRoot, build_site, is_loopback

log = _log.logger("http")


def http_listeners(
    config: Config,
    ports: Callable[[], Iterable[PortView]],
    reactor: Any,
    started_at: float,
    reload: Callable[[], str] | None = None,
    terminals: Iterable[PortView] | None = None,
) -> list[ListenerService]:
    """One listener per ``http`` entry, all serving one resource tree.

    ``terminals``: the ports whose websocket servers get a terminal, when
    they are not ``ports()`` yet (a reload builds the tree before it
    commits)."""
    tree = WebRoot(ports, started_at, reload)
    mount_terminals(tree, ports() if terminals is None else terminals, reactor)
    guarded = None
    if config.users or config.tokens:
        from .webauth import Checker
        from .webauth import guarded as guard

        pool = reactor.getThreadPool() if hasattr(reactor, "getThreadPool") else None
        guarded = guard(tree, Checker(config.users, config.tokens, pool))
    listeners = []
    for http in config.http:
        site: IProtocolFactory = build_site(http, tree, guarded, reactor)
        if http.listen.ssl is not None:
            from .tls import certificate_options, wrap_tls

            site = wrap_tls(site, certificate_options(http.listen.ssl, http.listen.ssl.where), reactor)
        listeners.append(ListenerService(make_endpoint(reactor, http.listen), site, http.listen))
    return listeners


def mount_terminals(tree: WebRoot, ports: Iterable[PortView], reactor: Any) -> None:
    """``/ws/<endpoint>`` and its terminal page ``/xterm/<endpoint>`` for
    every websocket server."""
    servers = [(port, a) for port in ports for a in port.admissions if a.server.protocol == "websocket"]
    if not servers:
        return
    from .websocket import WsFactory, WsResource

    for port, admission in servers:
        endpoint = str(admission.server.endpoint).encode()
        factory = WsFactory(port.hub, admission.server, reactor, admission)
        tree.ws.putChild(endpoint, WsResource(factory))
        tree.xterm.putChild(endpoint, Page("terminal.html"))


def warn_if_open(config: Config) -> None:
    """Without users or tokens the API is open: fine on loopback, worth a
    WARNING anywhere else."""
    if config.users or config.tokens:
        return
    for http in config.http:
        listen = http.listen
        if listen.endpoint is not None or not is_loopback(listen.address):
            log.warn(
                "{where}: HTTP {label} needs no login (no users or tokens configured): "
                "anyone who reaches it can see the ports and disconnect clients",
                where=listen.where,
                label=listen.label.split(" ", 1)[1],
            )
