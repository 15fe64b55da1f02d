"""The status document: what ``GET /api/status`` answers and the status page
shows, read from the ports' own state when asked (nothing is kept for it)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any, Protocol

from . import __version__
from .admission import Admission
from .config import PortConfig
from .hub import PortHub, State
from .serial_control import PYSERIAL_DEFAULTS, SETTINGS


class PortView(Protocol):
    """What the status needs of a port (a PortService)."""

    config: PortConfig
    hub: PortHub
    admissions: list[Admission]


def iso(seconds: float | None) -> str | None:
    """Reactor seconds (the epoch, on a real reactor) as ISO-8601 UTC."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def settings_in_effect(port: PortView) -> dict[str, Any]:
    """baudrate, bytesize, parity, stopbits, xonxoff, rtscts, dtr, rts: the
    open device's, or the configured ones while it is closed."""
    control = port.hub.control
    if control is not None:
        return {**control.settings(), "dtr": control.dtr, "rts": control.rts}
    configured = port.config.serial.settings
    settings = {key: configured.get(key, PYSERIAL_DEFAULTS[key]) for key in SETTINGS}
    lines = port.config.serial.lines
    return {**settings, "dtr": lines.get("dtr", True), "rts": lines.get("rts", True)}


def client_status(client: Any) -> dict[str, Any]:
    outbox = client.outbox
    return {
        "id": client.id,
        "peer": client.peer.rsplit(" ", 1)[0],
        "protocol": client.protocol,
        "connected_at": iso(client.connected_at),
        "bytes_sent": outbox.sent if outbox is not None else 0,
        "bytes_received": client.bytes_received,
        "queued_bytes": outbox.queued if outbox is not None else 0,
    }


def port_status(port: PortView) -> dict[str, Any]:
    hub, stats = port.hub, port.hub.stats
    return {
        "name": hub.name,
        "device": stats.device if hub.state is State.OPEN else None,
        "state": hub.state.value,
        "settings": settings_in_effect(port),
        "bytes_from_device": stats.bytes_from_device,
        "bytes_to_device": stats.bytes_to_device,
        "opened_at": iso(stats.opened_at),
        "servers": [
            {
                "protocol": admission.server.protocol,
                "listen": admission.server.label.split(" ", 1)[1],
                "access": admission.server.access,
                "max_connections": admission.server.max_connections,
                "clients": [client_status(c) for c in admission.members],
            }
            for admission in port.admissions
        ],
    }


def status_document(ports: Iterable[PortView], started_at: float) -> dict[str, Any]:
    return {
        "version": __version__,
        "started_at": iso(started_at),
        "ports": [port_status(port) for port in ports],
    }


def find_client(ports: Iterable[PortView], client_id: int) -> Any:
    """The connected client with ``client_id``, or None."""
    for port in ports:
        for admission in port.admissions:
            for client in admission.members:
                if getattr(client, "id", None) == client_id:
                    return client
    return None
