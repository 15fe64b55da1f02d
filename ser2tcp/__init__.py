"""ser2tcp: serial ports on the network (raw TCP, TELNET, TLS and Unix sockets)."""

from __future__ import annotations

__version__ = "4.0.0"

__all__ = ["__version__"]
