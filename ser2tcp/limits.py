"""The descriptor budget of one daemon.

A lab host runs hundreds of ports, and a login shell or a systemd unit
starts the daemon with a soft ``RLIMIT_NOFILE`` of 1024 whatever the hard
limit allows: at 64 ports with 10 clients each it already runs out.  At
startup the soft limit is raised to the hard one (nothing else needs
privileges), and if even that leaves too little room for what the config
asks, one WARNING says how many clients fit.
"""

from __future__ import annotations

import resource as _resource
from types import ModuleType
from typing import Any

from . import _log
from .config import Config

log = _log.logger("limits")

#: Descriptors of one open serial port: the device, and the two pipes (four
#: ends) pyserial opens for ``cancel_read``/``cancel_write``.
PER_PORT = 5
#: Descriptors of one connected client.
PER_CLIENT = 1
#: The daemon's own: standard streams, epoll, the reactor's waker, logs.
BASE = 16
#: Clients counted for a port whose config sets no connection limit.
DEFAULT_CLIENTS = 10
#: What to raise an unlimited hard limit to (Linux refuses more than
#: fs.nr_open, 1048576 by default).
UNLIMITED = 1 << 20


def raise_nofile(resource: ModuleType | Any = _resource) -> int:
    """Raise the soft descriptor limit to the hard one; the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warn(
                "Cannot raise the descriptor limit from {soft} to {hard}: {why}",
                soft=soft,
                hard=target,
                why=getattr(e, "strerror", None) or e,
            )
            return int(soft)
        log.debug("Descriptor limit raised from {soft} to {hard}", soft=soft, hard=target)
        return int(target)
    log.debug("Descriptor limit: {soft} (hard {hard})", soft=soft, hard=hard)
    return int(soft)


def wanted_clients(config: Config) -> int:
    """The clients the config lets in: each port's ``max_connections``, else
    its servers' together, else :data:`DEFAULT_CLIENTS`."""
    total = 0
    for port in config.ports:
        limits = [s.max_connections for s in port.servers]
        if port.max_connections:
            total += port.max_connections
        elif limits and all(limits):
            total += sum(limits)
        else:
            total += DEFAULT_CLIENTS
    return total


def clients_that_fit(config: Config, limit: int) -> int:
    """Clients that fit under ``limit`` once every listener is bound and
    every device is open."""
    listeners = sum(1 for p in config.ports for s in p.servers if s.protocol != "websocket")
    listeners += len(config.http)
    return max(0, (limit - BASE - listeners - PER_PORT * len(config.ports)) // PER_CLIENT)


def check_budget(config: Config, resource: ModuleType | Any = _resource) -> None:
    """Raise the limit, and warn if the config asks for more than fits."""
    limit = raise_nofile(resource)
    fit = clients_that_fit(config, limit)
    wanted = wanted_clients(config)
    if fit < wanted:
        log.warn(
            "The descriptor limit ({limit}) leaves room for {fit} client(s) with every device "
            "open, fewer than the {wanted} this config allows (each port costs {per_port}, each "
            "client {per_client}: raise LimitNOFILE= or ulimit -Hn, or split the config)",
            limit=limit,
            fit=fit,
            wanted=wanted,
            per_port=PER_PORT,
            per_client=PER_CLIENT,
        )
