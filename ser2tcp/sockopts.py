"""Socket options of accepted client connections.

TCP keepalive makes the kernel notice a peer that vanished without a FIN or
RST (a cable pulled, a laptop suspended): without it such a client would be
kept, and would keep the device open, forever.
"""

from __future__ import annotations

import socket
from typing import Any

#: Unanswered probes before the kernel gives up on the peer.
KEEPALIVE_PROBES = 3


def tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under ``transport`` (a TLS layer is looked through),
    or None for other transports (Unix sockets)."""
    for _ in range(4):  # TLS over TCP is two levels: bounded anyway
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            if handle.family in (socket.AF_INET, socket.AF_INET6):
                return handle
            return None
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def keepalive_timing(seconds: float) -> tuple[int, int, int]:
    """(idle, interval, probes) so that a silent peer is dropped after about
    ``seconds``: idle for half of it, then probes over the other half."""
    idle = max(1, round(seconds / 2))
    interval = max(1, round((seconds - idle) / KEEPALIVE_PROBES))
    return idle, interval, KEEPALIVE_PROBES


def set_keepalive(transport: Any, seconds: float | None) -> None:
    """Turn TCP keepalive on for ``transport``'s socket (None: leave it off)."""
    if not seconds:
        return
    sock = tcp_socket(transport)
    if sock is None:
        return
    idle, interval, probes = keepalive_timing(seconds)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS has only the switch
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)
    except OSError:
        pass  # the peer is already gone: connectionLost follows
