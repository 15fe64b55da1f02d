"""The config as frozen dataclasses, and the names and defaults of its keys.

Pure data: no Twisted, no parsing (see :mod:`ser2tcp.config`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import serial

from .ipfilter import IpFilter

PROTOCOLS = ("tcp", "telnet", "ssl", "socket", "websocket")
#: Other spellings of a protocol: the newer original ser2tcp says "tls".
PROTOCOL_ALIASES = {"tls": "ssl"}

PARITY_NAMES = {
    "NONE": serial.PARITY_NONE,
    "EVEN": serial.PARITY_EVEN,
    "ODD": serial.PARITY_ODD,
    "MARK": serial.PARITY_MARK,
    "SPACE": serial.PARITY_SPACE,
}
STOPBITS_NAMES = {
    "ONE": serial.STOPBITS_ONE,
    "ONE_POINT_FIVE": serial.STOPBITS_ONE_POINT_FIVE,
    "TWO": serial.STOPBITS_TWO,
}
BYTESIZE_NAMES = {
    "FIVEBITS": serial.FIVEBITS,
    "SIXBITS": serial.SIXBITS,
    "SEVENBITS": serial.SEVENBITS,
    "EIGHTBITS": serial.EIGHTBITS,
}
_SYMBOLIC: dict[str, tuple[Mapping[str, object], tuple[object, ...]]] = {
    "parity": (PARITY_NAMES, serial.Serial.PARITIES),
    "stopbits": (STOPBITS_NAMES, serial.Serial.STOPBITS),
    "bytesize": (BYTESIZE_NAMES, serial.Serial.BYTESIZES),
}

#: Keyword arguments of ``serial.Serial()`` that a config may set.
SERIAL_KEYS = (
    "port",
    "baudrate",
    "bytesize",
    "parity",
    "stopbits",
    "timeout",
    "xonxoff",
    "rtscts",
    "write_timeout",
    "dsrdtr",
    "inter_byte_timeout",
    "exclusive",
)

#: Serial settings that are flags: JSON true or false, nothing else.
FLAG_SETTINGS = ("xonxoff", "rtscts", "dsrdtr", "exclusive")
#: Serial settings in seconds (null: wait forever).
TIMEOUT_SETTINGS = ("timeout", "write_timeout", "inter_byte_timeout")
#: termios takes a custom speed as a C int.
MAX_BAUDRATE = 2**31 - 1

#: Attributes of ``serial.tools.list_ports`` entries that ``match`` may use.
MATCH_KEYS = (
    "vid",
    "pid",
    "serial_number",
    "manufacturer",
    "product",
    "location",
    "description",
    "hwid",
)

#: Initial modem-line states, applied as the port opens (pyserial asserts
#: both by default, which resets many boards).
LINE_KEYS = ("dtr", "rts")

RFC2217_POLICIES = ("apply", "ignore", "reject")

SERVER_KEYS = (
    "rfc2217",
    "settings",
    "protocol",
    "address",
    "port",
    "endpoint",
    "send_timeout",
    "buffer_limit",
    "ssl",
    "mode",
    "handshake_timeout",
    "tls",
    "allow",
    "deny",
    "max_connections",
    "on_full",
    "access",
    "keepalive",
    "half_close",
    "replay",
)

PORT_KEYS = (
    "serial",
    "servers",
    "max_connections",
    "name",
    "open",
    "on_loss",
    "reopen_interval",
    "log",
    "scrollback",
)
LOG_KEYS = ("path", "timestamps", "max_bytes", "backups")

#: When a port's device is open: while it has clients, or all the time.
OPEN_MODES = ("on_demand", "always")
#: What a lost device does to its clients: close them, or hold them while
#: the device is reopened.
ON_LOSS = ("close", "hold")
#: A port's name: what logs, status and metrics call it.
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
DEFAULT_REOPEN_INTERVAL = 1.0

#: What a server's clients may do: read and write, only read, only write.
ACCESS_MODES = ("rw", "ro", "wo")
#: What a server at its connection limit does with one more client.
ON_FULL = ("refuse", "kick_oldest")

#: Largest config file read: a config is a few KiB; anything this big is a mistake.
MAX_CONFIG_BYTES = 1 << 20

#: Server keys that only some protocols understand (``rfc2217`` has its own check).
PROTOCOL_ONLY = {
    "port": ("tcp", "telnet", "ssl"),
    "address": ("tcp", "telnet", "ssl", "socket"),
    "settings": ("websocket",),
    "ssl": ("ssl",),
    "tls": ("ssl",),
    "handshake_timeout": ("ssl",),
    "mode": ("socket",),
    "allow": ("tcp", "telnet", "ssl"),
    "deny": ("tcp", "telnet", "ssl"),
    "keepalive": ("tcp", "telnet", "ssl"),
}

DEFAULT_SEND_TIMEOUT = 5.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_KEEPALIVE = 60.0
DEFAULT_HALF_CLOSE = 2.0
#: Largest scrollback: it is kept in memory, once per port.
MAX_SCROLLBACK = 64 * 1024 * 1024


class ConfigError(Exception):
    """A config problem, already phrased as the one line a user sees."""


class StartupError(Exception):
    """The daemon cannot start (a listener cannot be bound); the text is the
    one line the user sees."""


@dataclass(frozen=True)
class SslConfig:
    certfile: str
    keyfile: str
    ca_certs: str | None = None
    #: Client certificate Common Names let in (None: any the CA signed).
    allow_client_cn: tuple[str, ...] | None = None
    #: The block's key path ("ports[0].servers[1].tls"), for messages only.
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class ServerConfig:
    """One listener of a serial port."""

    protocol: str
    address: str | None = None
    port: int | None = None
    endpoint: str | None = None
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT
    buffer_limit: int | None = None
    ssl: SslConfig | None = None
    mode: int | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: RFC 2217 on a TELNET server: None (off) or what to do with a client's
    #: settings: "apply", "ignore" (acknowledge, keep ours) or "reject".
    rfc2217: str | None = None
    #: Which peers may connect.
    ipfilter: IpFilter = IpFilter()
    #: Most clients at once (0: no limit), and what one more client does.
    max_connections: int = 0
    on_full: str = "refuse"
    #: "rw", "ro" (input discarded) or "wo" (sent nothing).
    access: str = "rw"
    #: Seconds until a peer that vanished silently is dropped (None: off).
    keepalive: float | None = DEFAULT_KEEPALIVE
    #: Seconds a client that shut down its sending side still receives.
    half_close: float = DEFAULT_HALF_CLOSE
    #: A joining client is sent the port's scrollback first.
    replay: bool = False
    #: websocket: what the terminal's setting and line controls do
    #: ("apply", "ignore" or "reject", as RFC 2217's policy).
    settings: str = "apply"
    #: Where this server stands in the config, for messages only: a
    #: server moved in the list is the same server to a reload.
    where: str = field(default="", compare=False)

    @property
    def place(self) -> str:
        """Where it listens: a reload matches servers by this, so a socket
        that stays where it was is never closed and bound again."""
        if self.protocol == "websocket":
            return f"ws:{self.endpoint}"
        if self.endpoint is not None:
            return f"endpoint:{self.endpoint}"
        if self.protocol == "socket":
            return f"unix:{self.address}"
        address = "" if self.address in (None, "", "*", "0.0.0.0") else self.address
        return f"tcp:{address}:{self.port}"

    @property
    def label(self) -> str:
        """How logs name this listener."""
        if self.protocol == "websocket":
            return f"WEBSOCKET /ws/{self.endpoint}"
        if self.endpoint is not None:
            return f"{self.protocol.upper()} {self.endpoint}"
        if self.protocol == "socket":
            return f"SOCKET {self.address}"
        host = self.address or "*"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.protocol.upper()} {host}:{self.port}"


@dataclass(frozen=True)
class SerialConfig:
    """How to find and open one serial device.

    ``settings`` holds ``serial.Serial`` keyword arguments, already validated
    and normalised (``"EVEN"`` is stored as ``"E"``).  With ``match`` set, the
    device path is looked up among USB serial devices at every open.
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    match: Mapping[str, str] | None = None
    #: Initial DTR/RTS states ("dtr": false), set before the port opens.
    lines: Mapping[str, bool] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.match is not None:
            return "match:" + json.dumps(dict(self.match), sort_keys=True)
        return str(self.settings.get("port"))


@dataclass(frozen=True)
class LogConfig:
    """A port log: everything the device sends, appended to ``path``."""

    path: str
    #: Each line starts with an ISO-8601 UTC time with milliseconds, and
    #: events (clients, device opened/lost) get marker lines; without it the
    #: file is the device's bytes, exactly.
    timestamps: bool = True
    #: Rotate at this size (0: never): ``path.1`` ... ``path.<backups>``.
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5


@dataclass(frozen=True)
class PortConfig:
    serial: SerialConfig
    servers: tuple[ServerConfig, ...]
    #: Most clients of all its servers together (0: no limit).
    max_connections: int = 0
    #: What logs, status and metrics call the port (unique in a config).
    name: str = ""
    open: str = "on_demand"
    on_loss: str = "close"
    #: Seconds between two tries to open an absent device.
    reopen_interval: float = DEFAULT_REOPEN_INTERVAL
    log: LogConfig | None = None
    #: Bytes of device output kept for joining clients (0: none).
    scrollback: int = 0
    #: Where the port stands in the config, for messages only.
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class Config:
    ports: tuple[PortConfig, ...]
    #: Non-fatal remarks (unknown keys), each a full line for the log.
    warnings: tuple[str, ...] = ()
    source: str = ""
    #: The HTTP side (:mod:`ser2tcp.config_http`): servers, users, tokens.
    http: tuple[Any, ...] = ()
    users: tuple[Any, ...] = ()
    tokens: tuple[Any, ...] = ()
