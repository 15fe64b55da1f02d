"""Reload: move the running daemon to a new config with the least disruption.

Ports are matched by ``name``, servers by where they listen
(:attr:`ServerConfig.place`); a port or server whose config is equal is left
alone wherever it stands in the list, and its clients never notice.

It runs in two phases, within one reactor turn:

* :meth:`Reload.prepare` builds everything new (factories, certificates,
  port logs) and binds every place that is not bound yet.  Whatever can fail
  fails here, and what was bound or opened is closed again: the running
  config stays whole.
* :meth:`Reload.commit` cannot fail: listening sockets at places the new
  config keeps are handed to their new servers (:meth:`ListenerService.adopt`),
  removed ports and servers stop with a notice to their clients, changed
  ports are reconfigured in place (serial settings set on the open device),
  new ports start.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import _log
from .admission import Admission
from .config import Config, PortConfig
from .hub import PortHub
from .listeners import ListenerService
from .portlog import PortLog

if TYPE_CHECKING:
    from .service import PortService, Ser2TcpService

log = _log.logger("reload")


class ReloadError(Exception):
    """The new config cannot be put in force; the text is the one line."""


@dataclass
class PortUpdate:
    """What a reload changes in a port that stays (same name, new config)."""

    service: PortService
    config: PortConfig
    #: The admissions of the new config's servers, in its order: the
    #: unchanged servers' own, new ones for the others.
    admissions: list[Admission] = field(default_factory=list)
    listeners: list[ListenerService] = field(default_factory=list)
    #: Servers that go (removed, or changed: a new one takes their place).
    dropped: list[Admission] = field(default_factory=list)
    dropped_listeners: list[ListenerService] = field(default_factory=list)
    #: The port log of the new config, when its ``log`` changed.
    port_log: PortLog | None = None
    #: How many servers stay as they are.
    unchanged: int = 0

    @property
    def log_changed(self) -> bool:
        return self.config.log != self.service.config.log

    def describe(self, done: list[str], old: PortConfig) -> str:
        places = {a.server.place for a in self.admissions}
        changed = sum(1 for a in self.dropped if a.server.place in places)
        removed = len(self.dropped) - changed
        added = len(self.admissions) - self.unchanged - changed
        parts = list(done)
        for n, what in ((added, "added"), (changed, "changed"), (removed, "removed")):
            if n:
                parts.append(f"{n} server{'s' if n > 1 else ''} {what}")
        if self.config.log != old.log:
            parts.append("log")
        for key in ("max_connections", "on_loss", "reopen_interval"):
            if getattr(old, key) != getattr(self.config, key):
                parts.append(key)
        return f"{self.config.name} ({', '.join(parts) or 'settings'})"


def same_port(old: PortConfig, new: PortConfig) -> bool:
    """Equal configs, whatever the order of the servers."""
    return replace(old, servers=()) == replace(new, servers=()) and sorted(
        old.servers, key=lambda s: s.place
    ) == sorted(new.servers, key=lambda s: s.place)


@dataclass
class _Future:
    """A port as the new config will have it, for mounting web terminals."""

    config: PortConfig
    hub: PortHub
    admissions: list[Admission]


class Reload:
    def __init__(self, daemon: Ser2TcpService, config: Config) -> None:
        self.daemon = daemon
        self.config = config
        self.kept: list[PortService] = []
        self.updates: list[PortUpdate] = []
        self.added: list[PortService] = []
        self.removed: list[PortService] = []
        self.http: list[ListenerService] = []
        #: New listeners taking over a running one's socket: (new, old).
        self._adoptions: list[tuple[ListenerService, ListenerService]] = []
        self._bound: list[ListenerService] = []
        self._opened: list[PortLog] = []
        #: Unchanged ports, with their config as the new file says it (its
        #: servers may be listed in another order).
        self._moved: list[tuple[PortService, PortConfig]] = []
        #: TLS listeners that stay, with their certificates read again.
        self._renewed: list[tuple[ListenerService, Any]] = []

    # prepare

    def prepare(self) -> None:
        """Build and bind everything new; on failure undo it and raise."""
        try:
            self._build()
            self._renew_tls()
            self._open_logs()
            self._bind()
        except Exception:
            self.rollback()
            raise

    def _build(self) -> None:
        from .service import PortService

        daemon = self.daemon
        running = {p.config.name: p for p in daemon.ports()}
        names = {p.name for p in self.config.ports}
        self.removed = [p for name, p in running.items() if name not in names]
        for port in self.config.ports:
            service = running.get(port.name)
            if service is None:
                self.added.append(PortService(port, daemon.reactor, daemon.claims))
            elif same_port(service.config, port):
                self.kept.append(service)
                self._moved.append((service, port))
            else:
                self.updates.append(self._update(service, port))
        if self.config.http:
            from .http_service import http_listeners

            futures: list[Any] = [*self.kept, *self.added]
            futures += [_Future(u.config, u.service.hub, u.admissions) for u in self.updates]
            self.http = http_listeners(
                self.config, daemon.ports, daemon.reactor, daemon.started_at, daemon.reload, futures
            )

    @staticmethod
    def _update(service: PortService, port: PortConfig) -> PortUpdate:
        update = PortUpdate(service, port)
        running = {a.server.place: a for a in service.admissions}
        kept = set()
        for server in port.servers:
            admission = running.get(server.place)
            if admission is not None and admission.server == server:
                update.admissions.append(admission)
                kept.add(server.place)
                continue
            admission, listener = service.make_server(server)
            update.admissions.append(admission)
            if listener is not None:
                update.listeners.append(listener)
        update.unchanged = len(kept)
        update.dropped = [a for a in service.admissions if a.server.place not in kept]
        update.dropped_listeners = [s for s in service.listeners() if s.server.place not in kept]
        if update.log_changed:
            update.port_log = service.make_log(port)
        return update

    def _renew_tls(self) -> None:
        """Kept TLS servers read their certificate files again."""
        for service in self.kept:
            self._renewed += service.renewed_tls()
        for update in self.updates:
            kept = {a.server.place for a in update.admissions} - {s.server.place for s in update.listeners}
            self._renewed += [(s, f) for s, f in update.service.renewed_tls() if s.server.place in kept]

    def _open_logs(self) -> None:
        for service in self.added:
            if service.port_log is not None:
                service.open_log()
                self._opened.append(service.port_log)
        for update in self.updates:
            if update.port_log is not None:
                update.service.open_log(update.port_log)
                self._opened.append(update.port_log)

    def _bind(self) -> None:
        """Bind every new place; a place the running daemon listens on
        already is taken over at commit instead."""
        running = {s.server.place: s for s in self.daemon.listeners()}
        new = [s for p in self.added for s in p.listeners()]
        new += [s for u in self.updates for s in u.listeners] + self.http
        for listener in new:
            old = running.get(listener.server.place)
            if old is not None:
                self._adoptions.append((listener, old))
            else:
                listener.listen()
                self._bound.append(listener)

    def rollback(self) -> None:
        for listener in self._bound:
            listener.stopService()
        for port_log in self._opened:
            port_log.close()

    # commit

    def commit(self) -> str:
        """Put the new config in force; returns the one-line summary."""
        daemon = self.daemon
        for listener, running in self._adoptions:
            listener.adopt(running)
        for listener, factory in self._renewed:
            listener.switch.switch(factory, listening=listener.port is not None)
        for service in self.removed:
            service.stop_reason = f"port {service.config.name} was removed from the config"
            service.disownServiceParent()
        changed = []
        for update in self.updates:
            before = update.service.config
            changed.append(update.describe(self._apply(update), before))
        for service, port in self._moved:
            order = {server.place: i for i, server in enumerate(port.servers)}
            service.admissions.sort(key=lambda a: order[a.server.place])
            service.config = port
        for service in self.added:
            service.setServiceParent(daemon)
        for listener in daemon.http_listeners():
            listener.disownServiceParent()  # those taken over close nothing
        for listener in self.http:
            listener.setServiceParent(daemon)
        daemon.put_in_order(self.config)
        return self._summary(changed)

    def _apply(self, update: PortUpdate) -> list[str]:
        service, port = update.service, update.config
        for listener in update.dropped_listeners:
            listener.disownServiceParent()  # a socket taken over stays open
        places = {a.server.place for a in update.admissions}
        for admission in update.dropped:
            server = admission.server
            why = "changed" if server.place in places else "removed from the config"
            for member in list(admission.members):
                member.disconnect(f"server {server.label} {why}; connect again")
        service.admissions = update.admissions
        for listener in update.listeners:
            listener.setServiceParent(service)
        service.count.limit = port.max_connections
        if update.log_changed:
            hub = service.hub
            if service.port_log is not None:
                service.port_log.close()
                hub.taps.remove(service.port_log)
            service.port_log = update.port_log
            if update.port_log is not None:
                hub.taps.append(update.port_log)
        done = service.hub.reconfigure(port)
        service.config = port
        return done

    def _summary(self, changed: list[str]) -> str:
        parts = []
        if self.added:
            parts.append("added " + ", ".join(p.config.name for p in self.added))
        if self.removed:
            parts.append("removed " + ", ".join(p.config.name for p in self.removed))
        if changed:
            parts.append("changed " + ", ".join(changed))
        old = self.daemon.config
        if (old.http, old.users, old.tokens) != (self.config.http, self.config.users, self.config.tokens):
            parts.append("HTTP changed")
        if not parts:
            return "nothing changed"
        if self.kept:
            parts.append(f"{len(self.kept)} port{'s' if len(self.kept) > 1 else ''} unchanged")
        return "; ".join(parts)
