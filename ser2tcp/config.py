"""Turn a ser2tcp JSON config into frozen, validated dataclasses.

Everything a user can get wrong is checked here, at startup, so that a bad
config is one clear line naming the file and the key path, and never a crash
when the first client connects.  This module imports no Twisted: it is pure
data and can be tested and reused (``--check`` tools, benchmarks) alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import serial

from .ipfilter import IpFilter, parse_network

PROTOCOLS = ("tcp", "telnet", "ssl", "socket")
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
_SYMBOLIC = {
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
    #: Where this server stands in the config, for messages.
    where: str = ""

    @property
    def label(self) -> str:
        """How logs name this listener."""
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
    where: str = ""


@dataclass(frozen=True)
class Config:
    ports: tuple[PortConfig, ...]
    #: Non-fatal remarks (unknown keys), each a full line for the log.
    warnings: tuple[str, ...] = ()
    source: str = ""


def load_config(path: str) -> Config:
    """Read and validate the JSON config at ``path``."""
    if not path:
        raise ConfigError("the config file path is empty (-c '')")
    text = _read_config(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None
    return parse_config(data, source=path)


def _read_config(path: str) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_CONFIG_BYTES`.

    A device or a pipe (``-c /dev/zero``) could be read forever, and a huge
    file would be read into memory whole: neither is a config."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
                raise ConfigError(f"{path}: cannot read config: {kind}")
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: config larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB; not reading it"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: config is not UTF-8 text: {e.reason}") from None


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate already-decoded JSON; errors name ``source`` and the key path."""
    parser = _Parser(source)
    try:
        ports = parser.root(data)
    except _Invalid as e:
        raise ConfigError(
            f"{source}: {e.where}: {e.problem}" if e.where else f"{source}: {e.problem}"
        ) from None
    return Config(ports=ports, warnings=tuple(parser.warnings), source=source)


class _Invalid(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where = where
        self.problem = problem


def _show(value: Any) -> str:
    """A config value as the user wrote it, kept short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _at(where: str, key: str) -> str:
    """The key path of ``key`` inside ``where``; odd keys are quoted, so that
    a message stays one line whatever the config holds."""
    if _IDENTIFIER.match(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key)}]"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _symbolic(key: str, value: Any, at: str) -> Any:
    """``"EVEN"`` -> ``"E"``; pyserial's own values pass, anything else is refused."""
    names, native = _SYMBOLIC[key]
    if isinstance(value, str) and value in names:
        return names[value]
    # bool is an int and 8.0 == 8: neither is how a size or a count is written.
    if isinstance(value, bool) or (key == "bytesize" and not _is_int(value)) or value not in native:
        raise _Invalid(
            at,
            "expected one of "
            + ", ".join(names)
            + " (or "
            + ", ".join(_show(v) for v in native)
            + f"), got {_show(value)}",
        )
    return value


def _count(value: Any, where: str) -> int:
    """A number of connections: a whole number >= 0 (0, like null, is no limit)."""
    if value is None:
        return 0
    if not _is_int(value) or value < 0:
        raise _Invalid(where, f"expected a whole number >= 0 (0: no limit), got {_show(value)}")
    return int(value)


def _choice(value: Any, choices: Sequence[str], where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _Invalid(where, "expected one of " + ", ".join(choices) + f", got {_show(value)}")
    return value


def _check_setting(key: str, value: Any, at: str) -> None:
    """Refuse a serial setting of the wrong JSON type.

    pyserial's setters take any value as a flag (``"false"`` switches
    ``xonxoff`` on) and ``true`` or ``9600.5`` as a baud rate: its own checks
    cannot be the only ones."""
    if key == "baudrate":
        if not _is_int(value) or not 1 <= value <= MAX_BAUDRATE:
            raise _Invalid(
                at, f"expected a whole number of bits per second, 1 to {MAX_BAUDRATE}, got {_show(value)}"
            )
    elif key in FLAG_SETTINGS:
        if not isinstance(value, bool):
            raise _Invalid(at, f"expected true or false, got {_show(value)}")
    elif key in TIMEOUT_SETTINGS:
        if value is not None and (not _is_number(value) or value < 0):
            raise _Invalid(at, f"expected a number of seconds >= 0 or null, got {_show(value)}")


def _check_devices_unique(ports: Sequence[PortConfig]) -> None:
    """One device in two ports is a config error naming both: each read of
    the device would go to one of them, and the other's clients would miss
    it.  Paths are compared after resolving symlinks (where the device
    exists now); pyserial URLs (``loop://``) are not devices."""
    seen: dict[str, str] = {}
    for port in ports:
        path = port.serial.settings.get("port")
        if port.serial.match is not None or not isinstance(path, str) or "://" in path:
            continue
        real = os.path.realpath(path)
        at = f"{port.where}.serial.port"
        if real in seen:
            raise _Invalid(at, f"{path} is the device of {seen[real]} too")
        seen[real] = at


def _check_listeners_unique(ports: Sequence[PortConfig]) -> None:
    """Two servers of one config at one place is a config error naming both:
    binding the second would fail with a misleading "in use by another
    process" (it is this process)."""
    seen: dict[tuple[Any, ...], str] = {}
    for port in ports:
        for server in port.servers:
            if server.endpoint is not None:
                continue  # the user's own string: Twisted says what is wrong
            if server.protocol == "socket":
                path = str(server.address)
                directory, name = os.path.split(os.path.abspath(path))
                place: tuple[Any, ...] = ("unix", os.path.join(os.path.realpath(directory), name))
                at, shown = f"{server.where}.address", path
            else:
                place = ("tcp", server.address, server.port)
                at, shown = f"{server.where}.port", server.label.split(" ", 1)[1]
            if place in seen:
                raise _Invalid(at, f"{shown} is already used by {seen[place]}")
            seen[place] = server.where


def derived_name(serial: SerialConfig) -> str:
    """A port's name when the config gives none: the device path without
    ``/dev/`` (``ttyUSB0``, ``pts-3``), the URL's scheme and place
    (``socket-host-7000``), or for ``match`` the criteria
    (``usb-0x303A-AB12``)."""
    if serial.match is not None:
        text = "usb-" + "-".join(serial.match.values())
    else:
        port = str(serial.settings.get("port", "port"))
        text = port.replace("://", "-") if "://" in port else port.removeprefix("/dev/")
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60]
    return text or "port"


def _name_ports(ports: tuple[PortConfig, ...]) -> tuple[PortConfig, ...]:
    """Every port named, names unique: a given name is the user's and must
    be unique; a derived one gets ``-2``, ``-3``... if taken."""
    taken: dict[str, str] = {}
    for port in ports:
        if port.name:
            if port.name in taken:
                raise _Invalid(
                    f"{port.where}.name", f"{port.name!r} is already the name of {taken[port.name]}"
                )
            taken[port.name] = port.where
    named = []
    for port in ports:
        if not port.name:
            base = derived_name(port.serial)
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base}-{n}"
            taken[name] = port.where
            port = replace(port, name=name)
        named.append(port)
    return tuple(named)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def warn_unknown(self, obj: Mapping[str, Any], known: Sequence[str], where: str) -> None:
        for key in obj:
            if key not in known:
                self.warnings.append(f"{self.source}: {_at(where, key)}: unknown key, ignored")

    def root(self, data: Any) -> tuple[PortConfig, ...]:
        if isinstance(data, dict):
            self.warn_unknown(data, ("ports",), "")
            ports = data.get("ports", [])
            where = "ports"
            if not isinstance(ports, list):
                raise _Invalid(where, f"expected a list of ports, got {_show(ports)}")
        elif isinstance(data, list):
            ports, where = data, ""
        else:
            raise _Invalid(
                "",
                f'expected a JSON object with "ports" or a list of ports, got {_show(data)}',
            )
        if not ports:
            raise _Invalid(where, "no ports configured")
        parsed = tuple(self.port(p, f"{where}[{i}]" if where else f"[{i}]") for i, p in enumerate(ports))
        _check_listeners_unique(parsed)
        _check_devices_unique(parsed)
        return _name_ports(parsed)

    def port(self, data: Any, where: str) -> PortConfig:
        if not isinstance(data, dict):
            raise _Invalid(where, f"expected an object, got {_show(data)}")
        self.warn_unknown(data, PORT_KEYS, where)
        for key in ("serial", "servers"):
            if key not in data:
                raise _Invalid(where, f'missing "{key}"')
        servers = data["servers"]
        if not isinstance(servers, list):
            raise _Invalid(f"{where}.servers", f"expected a list, got {_show(servers)}")
        if not servers:
            self.warnings.append(f"{self.source}: {where}.servers: empty, nobody can reach this port")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or not NAME.match(name)):
            raise _Invalid(
                f"{where}.name", f"expected 1-64 characters of A-Z a-z 0-9 . _ -, got {_show(name)}"
            )
        interval = data.get("reopen_interval", DEFAULT_REOPEN_INTERVAL)
        if not _is_number(interval) or interval <= 0:
            raise _Invalid(
                f"{where}.reopen_interval", f"expected a number of seconds > 0, got {_show(interval)}"
            )
        scrollback = data.get("scrollback", 0)
        if not _is_int(scrollback) or not 0 <= scrollback <= MAX_SCROLLBACK:
            raise _Invalid(
                f"{where}.scrollback",
                f"expected a number of bytes 0-{MAX_SCROLLBACK}, got {_show(scrollback)}",
            )
        return PortConfig(
            serial=self.serial(data["serial"], f"{where}.serial"),
            servers=tuple(self.server(s, f"{where}.servers[{i}]") for i, s in enumerate(servers)),
            max_connections=_count(data.get("max_connections"), f"{where}.max_connections"),
            name=name or "",
            open=_choice(data.get("open", "on_demand"), OPEN_MODES, f"{where}.open"),
            on_loss=_choice(data.get("on_loss", "close"), ON_LOSS, f"{where}.on_loss"),
            reopen_interval=float(interval),
            log=self.log(data.get("log"), f"{where}.log"),
            scrollback=scrollback,
            where=where,
        )

    def log(self, data: Any, where: str) -> LogConfig | None:
        if data is None:
            return None
        if not isinstance(data, dict):
            raise _Invalid(where, f'expected {{"path": ...}}, got {_show(data)}')
        self.warn_unknown(data, LOG_KEYS, where)
        path = data.get("path")
        if not isinstance(path, str) or not path:
            raise _Invalid(f"{where}.path", f"expected a file path, got {_show(path)}")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise _Invalid(f"{where}.path", f"the directory {directory} does not exist")
        timestamps = data.get("timestamps", True)
        if not isinstance(timestamps, bool):
            raise _Invalid(f"{where}.timestamps", f"expected true or false, got {_show(timestamps)}")
        sizes = {}
        for key, default, least in (("max_bytes", LogConfig.max_bytes, 0), ("backups", LogConfig.backups, 1)):
            value = data.get(key, default)
            if not _is_int(value) or value < least:
                raise _Invalid(f"{where}.{key}", f"expected a whole number >= {least}, got {_show(value)}")
            sizes[key] = value
        return LogConfig(path=path, timestamps=timestamps, **sizes)

    def serial(self, data: Any, where: str) -> SerialConfig:
        if not isinstance(data, dict):
            raise _Invalid(where, f"expected an object, got {_show(data)}")
        match = None
        if "match" in data:
            match = self.match(data["match"], f"{where}.match")
        elif "port" not in data:
            raise _Invalid(where, 'needs "port" or "match"')
        settings: dict[str, Any] = {}
        lines: dict[str, bool] = {}
        probe = serial.Serial()  # never opened: its setters validate values
        for key, value in data.items():
            at = _at(where, key)
            if key == "match":
                continue
            if key in LINE_KEYS:
                if not isinstance(value, bool):
                    raise _Invalid(at, f"expected true or false, got {_show(value)}")
                lines[key] = value
                continue
            if key not in SERIAL_KEYS:
                raise _Invalid(at, "unknown serial setting (known: " + ", ".join(SERIAL_KEYS) + ")")
            if key == "port":
                if match is not None:
                    continue  # match wins, as in the original ser2tcp
                if not isinstance(value, str) or not value:
                    raise _Invalid(at, f"expected a device path or URL, got {_show(value)}")
                settings[key] = value
                continue
            if key in _SYMBOLIC:
                value = _symbolic(key, value, at)
            else:
                _check_setting(key, value, at)
            try:
                setattr(probe, key, value)
            except (ValueError, TypeError, OverflowError) as e:
                raise _Invalid(at, f"{_one_line(e)} (got {_show(value)})") from None
            settings[key] = getattr(probe, key)
        return SerialConfig(settings=settings, match=match, lines=lines)

    def match(self, data: Any, where: str) -> dict[str, str]:
        if not isinstance(data, dict):
            raise _Invalid(where, f"expected an object, got {_show(data)}")
        if not data:
            raise _Invalid(where, "is empty: give at least one of " + ", ".join(MATCH_KEYS))
        result = {}
        for key, value in data.items():
            at = _at(where, key)
            if key not in MATCH_KEYS:
                raise _Invalid(at, "unknown match attribute (known: " + ", ".join(MATCH_KEYS) + ")")
            if key in ("vid", "pid") and _is_int(value) and 0 <= value <= 0xFFFF:
                value = f"0x{value:04X}"
            if not isinstance(value, str) or not value:
                raise _Invalid(at, f"expected a non-empty string pattern, got {_show(value)}")
            result[key] = value
        return result

    def server(self, data: Any, where: str) -> ServerConfig:
        if not isinstance(data, dict):
            raise _Invalid(where, f"expected an object, got {_show(data)}")
        self.warn_unknown(data, SERVER_KEYS, where)
        if "protocol" not in data:
            raise _Invalid(
                where, 'missing "protocol" (one of ' + ", ".join((*PROTOCOLS, *PROTOCOL_ALIASES)) + ")"
            )
        protocol = data["protocol"]
        if not isinstance(protocol, str) or protocol.lower() not in (*PROTOCOLS, *PROTOCOL_ALIASES):
            raise _Invalid(
                f"{where}.protocol",
                "expected one of " + ", ".join((*PROTOCOLS, *PROTOCOL_ALIASES)) + f", got {_show(protocol)}",
            )
        protocol = PROTOCOL_ALIASES.get(protocol.lower(), protocol.lower())
        self.check_belongs(data, protocol, where)
        kw: dict[str, Any] = {"protocol": protocol, "where": where}

        if data.get("endpoint") is not None:
            endpoint = data["endpoint"]
            if not isinstance(endpoint, str) or not endpoint.strip():
                raise _Invalid(f"{where}.endpoint", f"expected an endpoint string, got {_show(endpoint)}")
            kw["endpoint"] = endpoint
        elif protocol == "socket":
            kw["address"] = self.socket_path(data, where)
        else:
            if "address" not in data:
                raise _Invalid(where, 'missing "address" (or "endpoint")')
            address = data["address"]
            if not isinstance(address, str):
                raise _Invalid(
                    f"{where}.address", f"expected a host name or IP address, got {_show(address)}"
                )
            if "port" not in data:
                raise _Invalid(where, 'missing "port"')
            port = data["port"]
            if not _is_int(port) or not 1 <= port <= 65535:
                raise _Invalid(f"{where}.port", f"expected an integer 1-65535, got {_show(port)}")
            kw["address"] = address
            kw["port"] = port

        send_timeout = data.get("send_timeout")
        if send_timeout is None:
            send_timeout = DEFAULT_SEND_TIMEOUT
        elif not _is_number(send_timeout) or send_timeout < 0:
            raise _Invalid(
                f"{where}.send_timeout",
                f"expected a number of seconds >= 0, got {_show(send_timeout)}",
            )
        kw["send_timeout"] = float(send_timeout)

        buffer_limit = data.get("buffer_limit")
        if buffer_limit is not None and (not _is_int(buffer_limit) or buffer_limit < 0):
            raise _Invalid(
                f"{where}.buffer_limit",
                f"expected a number of bytes >= 0 or null, got {_show(buffer_limit)}",
            )
        kw["buffer_limit"] = buffer_limit or None  # 0 means unlimited, as upstream

        handshake_timeout = data.get("handshake_timeout")
        if handshake_timeout is not None:
            if not _is_number(handshake_timeout) or handshake_timeout <= 0:
                raise _Invalid(
                    f"{where}.handshake_timeout",
                    f"expected a number of seconds > 0, got {_show(handshake_timeout)}",
                )
            kw["handshake_timeout"] = float(handshake_timeout)

        if protocol == "ssl":
            kw["ssl"] = self.tls_block(data, where)

        kw.update(self.admission(data, where))

        if data.get("rfc2217") is not None and data["rfc2217"] is not False:
            kw["rfc2217"] = self.rfc2217(data["rfc2217"], protocol, f"{where}.rfc2217")
            if kw["access"] == "ro":
                kw["rfc2217"] = "ignore"  # an observer changes nothing on the port

        if data.get("mode") is not None:
            mode = data["mode"]
            try:
                if not isinstance(mode, str):
                    raise ValueError
                kw["mode"] = int(mode, 8)
                if not 0 <= kw["mode"] <= 0o7777:
                    raise ValueError
            except ValueError:
                raise _Invalid(
                    f"{where}.mode", f'expected an octal string such as "0660", got {_show(mode)}'
                ) from None
        return ServerConfig(**kw)

    def check_belongs(self, data: Mapping[str, Any], protocol: str, where: str) -> None:
        """Refuse keys of another protocol rather than ignore them: an ``ssl``
        block on a ``tcp`` server would otherwise start a cleartext server
        whose user believes it encrypted."""
        for key, protocols in PROTOCOL_ONLY.items():
            if data.get(key) is not None and protocol not in protocols:
                raise _Invalid(_at(where, key), f"only for {' and '.join(protocols)} servers, not {protocol}")
        if data.get("endpoint") is not None:
            for key in ("address", "port", "mode"):
                if data.get(key) is not None:
                    raise _Invalid(
                        _at(where, key), 'not used with "endpoint" (the endpoint string says where to listen)'
                    )

    def admission(self, data: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Who may connect, how many, what they may do, and how long a
        silent or half-closed peer is kept."""
        kw: dict[str, Any] = {}
        lists = {}
        for key in ("allow", "deny"):
            lists[key] = self.networks(data.get(key), _at(where, key))
        kw["ipfilter"] = IpFilter.from_lists(**lists)
        kw["max_connections"] = _count(data.get("max_connections"), f"{where}.max_connections")
        kw["on_full"] = _choice(data.get("on_full", "refuse"), ON_FULL, f"{where}.on_full")
        kw["access"] = _choice(data.get("access", "rw"), ACCESS_MODES, f"{where}.access")
        keepalive = data.get("keepalive", DEFAULT_KEEPALIVE)
        if keepalive is not None and (not _is_number(keepalive) or keepalive < 0):
            raise _Invalid(
                f"{where}.keepalive", f"expected a number of seconds >= 0 or null, got {_show(keepalive)}"
            )
        kw["keepalive"] = float(keepalive) if keepalive else None
        half_close = data.get("half_close", DEFAULT_HALF_CLOSE)
        if not _is_number(half_close) or half_close < 0:
            raise _Invalid(
                f"{where}.half_close", f"expected a number of seconds >= 0, got {_show(half_close)}"
            )
        kw["half_close"] = float(half_close)
        replay = data.get("replay", False)
        if not isinstance(replay, bool):
            raise _Invalid(f"{where}.replay", f"expected true or false, got {_show(replay)}")
        kw["replay"] = replay
        return kw

    def networks(self, data: Any, where: str) -> list[str]:
        if data is None:
            return []
        if not isinstance(data, list):
            raise _Invalid(
                where, f'expected a list of IP addresses or networks ("10.0.0.0/8"), got {_show(data)}'
            )
        for i, entry in enumerate(data):
            if not isinstance(entry, str):
                raise _Invalid(f"{where}[{i}]", f"expected an IP address or network, got {_show(entry)}")
            try:
                parse_network(entry)
            except ValueError:
                raise _Invalid(f"{where}[{i}]", f"not an IP address or network: {_show(entry)}") from None
        return data

    def tls_block(self, data: Mapping[str, Any], where: str) -> SslConfig:
        """The ``ssl`` block, or ``tls`` as the newer original spells it."""
        if data.get("ssl") is not None and data.get("tls") is not None:
            raise _Invalid(f"{where}.tls", 'give "ssl" or "tls", not both')
        key = "tls" if data.get("tls") is not None else "ssl"
        return self.ssl(data.get(key), _at(where, key))

    def rfc2217(self, data: Any, protocol: str, where: str) -> str:
        if protocol != "telnet":
            raise _Invalid(where, f'RFC 2217 needs "protocol": "telnet", not {_show(protocol)}')
        if data is True:
            return "apply"
        if not isinstance(data, dict):
            raise _Invalid(where, f'expected true or {{"settings": "apply"}}, got {_show(data)}')
        self.warn_unknown(data, ("settings",), where)
        policy = data.get("settings", "apply")
        if policy not in RFC2217_POLICIES:
            raise _Invalid(
                f"{where}.settings",
                "expected one of " + ", ".join(RFC2217_POLICIES) + f", got {_show(policy)}",
            )
        return str(policy)

    def socket_path(self, data: Mapping[str, Any], where: str) -> str:
        if "address" not in data:
            raise _Invalid(where, 'missing "address" (the Unix socket path)')
        path = data["address"]
        if not isinstance(path, str) or not path:
            raise _Invalid(f"{where}.address", f"expected a socket file path, got {_show(path)}")
        try:
            encoded = path.encode()
        except UnicodeEncodeError:
            raise _Invalid(f"{where}.address", f"not a valid file name: {_show(path)}") from None
        if len(encoded) > 107:
            raise _Invalid(f"{where}.address", "socket path longer than 107 bytes")
        return path

    def ssl(self, data: Any, where: str) -> SslConfig:
        if not isinstance(data, dict):
            raise _Invalid(where, 'protocol "ssl" requires "ssl": {"certfile": ..., "keyfile": ...}')
        self.warn_unknown(data, ("certfile", "keyfile", "ca_certs", "allow_client_cn"), where)
        files = {}
        for key in ("certfile", "keyfile", "ca_certs"):
            value = data.get(key)
            if value is None and key == "ca_certs":
                continue
            if not isinstance(value, str) or not value:
                raise _Invalid(
                    f"{where}.{key}",
                    "SSL requires certfile and keyfile"
                    if value is None
                    else f"expected a file path, got {_show(value)}",
                )
            try:
                with open(value, "rb"):
                    pass
            except OSError as e:
                shown = value if value.isprintable() else _show(value)
                raise _Invalid(f"{where}.{key}", f"cannot read {shown}: {e.strerror or e}") from None
            except (ValueError, UnicodeError):
                raise _Invalid(f"{where}.{key}", f"not a valid file name: {_show(value)}") from None
            files[key] = value
        names = data.get("allow_client_cn")
        if names is None:
            return SslConfig(**files)
        at = f"{where}.allow_client_cn"
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise _Invalid(at, f"expected a list of certificate Common Names, got {_show(names)}")
        if "ca_certs" not in files:
            raise _Invalid(at, 'needs "ca_certs": without client certificates there is no name to check')
        return SslConfig(**files, allow_client_cn=tuple(names))
