"""ser2tcp: serial ports on the network (raw TCP, TELNET, TLS, Unix sockets)."""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("ser2tcp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
