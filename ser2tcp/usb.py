"""USB serial devices: find one by its attributes, list them all (``-u``).

``match`` is resolved at every open, never at startup, so a device that is
plugged in later, or that comes back as another ``/dev/ttyACMn``, is found.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

Comports = Callable[[], Iterable[ListPortInfo]]


class MatchError(Exception):
    """No device, or more than one, fits a ``match``."""


def attribute(port: Any, key: str) -> str | None:
    """A port attribute as ``match`` compares it (vid/pid as ``0xXXXX``)."""
    value = getattr(port, key, None)
    if value is None:
        return None
    if key in ("vid", "pid"):
        return f"0x{value:04X}"
    return str(value)


def matches(port: Any, criteria: Mapping[str, str]) -> bool:
    """Every criterion is a case-insensitive shell pattern (``*``, ``?``)."""
    for key, pattern in criteria.items():
        value = attribute(port, key)
        if value is None or not fnmatch.fnmatchcase(value.upper(), pattern.upper()):
            return False
    return True


def find_device(criteria: Mapping[str, str], comports: Comports = list_ports.comports) -> str:
    """The device path of the one port that matches ``criteria``."""
    found = sorted(p.device for p in comports() if matches(p, criteria))
    shown = json.dumps(dict(criteria), sort_keys=True)
    if not found:
        raise MatchError(f"no device found matching {shown}")
    if len(found) > 1:
        raise MatchError(f"several devices match {shown}: {', '.join(found)}")
    return found[0]


def describe_usb_devices(comports: Comports = list_ports.comports) -> str:
    """The ``ser2tcp -u`` listing, in the original ser2tcp's format."""
    lines = []
    for port in comports():
        if port.vid is None:
            continue
        lines.append(port.device)
        lines.append(f"  vid: 0x{port.vid:04X}")
        lines.append(f"  pid: 0x{port.pid or 0:04X}")
        for key in ("serial_number", "manufacturer", "product", "location"):
            value = getattr(port, key, None)
            if value:
                lines.append(f"  {key}: {value}")
        lines.append("")
    if not lines:
        return "No USB serial devices found\n"
    return "\n".join(lines) + "\n"
