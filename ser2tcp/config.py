"""Turn a ser2tcp JSON config into frozen, validated dataclasses.

Everything a user can get wrong is checked here, at startup, so that a bad
config is one clear line naming the file and the key path, and never a crash
when the first client connects.  This module imports no Twisted: it is pure
data and can be tested and reused (``--check`` tools, benchmarks) alone.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import serial

PROTOCOLS = ("tcp", "telnet", "ssl", "socket")

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
)

DEFAULT_SEND_TIMEOUT = 5.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


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
    #: Where this server stands in the config, for messages.
    where: str = ""

    @property
    def label(self) -> str:
        """How logs name this listener."""
        if self.endpoint is not None:
            return f"{self.protocol.upper()} {self.endpoint}"
        if self.protocol == "socket":
            return f"SOCKET {self.address}"
        return f"{self.protocol.upper()} {self.address or '*'}:{self.port}"


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
class PortConfig:
    serial: SerialConfig
    servers: tuple[ServerConfig, ...]
    where: str = ""


@dataclass(frozen=True)
class Config:
    ports: tuple[PortConfig, ...]
    #: Non-fatal remarks (unknown keys), each a full line for the log.
    warnings: tuple[str, ...] = ()
    source: str = ""


def load_config(path: str) -> Config:
    """Read and validate the JSON config at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: config is not UTF-8 text: {e.reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None
    return parse_config(data, source=path)


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
        return tuple(self.port(p, f"{where}[{i}]" if where else f"[{i}]") for i, p in enumerate(ports))

    def port(self, data: Any, where: str) -> PortConfig:
        if not isinstance(data, dict):
            raise _Invalid(where, f"expected an object, got {_show(data)}")
        self.warn_unknown(data, ("serial", "servers"), where)
        for key in ("serial", "servers"):
            if key not in data:
                raise _Invalid(where, f'missing "{key}"')
        servers = data["servers"]
        if not isinstance(servers, list):
            raise _Invalid(f"{where}.servers", f"expected a list, got {_show(servers)}")
        if not servers:
            self.warnings.append(f"{self.source}: {where}.servers: empty, nobody can reach this port")
        return PortConfig(
            serial=self.serial(data["serial"], f"{where}.serial"),
            servers=tuple(self.server(s, f"{where}.servers[{i}]") for i, s in enumerate(servers)),
            where=where,
        )

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
                names, native = _SYMBOLIC[key]
                if isinstance(value, str) and value in names:
                    value = names[value]
                elif value not in native or isinstance(value, bool):
                    raise _Invalid(
                        at,
                        "expected one of "
                        + ", ".join(names)
                        + " (or "
                        + ", ".join(_show(v) for v in native)
                        + f"), got {_show(value)}",
                    )
            elif value is not None and isinstance(value, (dict, list)):
                raise _Invalid(at, f"expected a value, got {_show(value)}")
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
            raise _Invalid(where, 'missing "protocol" (one of ' + ", ".join(PROTOCOLS) + ")")
        protocol = data["protocol"]
        if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
            raise _Invalid(
                f"{where}.protocol",
                "expected one of " + ", ".join(PROTOCOLS) + f", got {_show(protocol)}",
            )
        protocol = protocol.lower()
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
            kw["ssl"] = self.ssl(data.get("ssl"), f"{where}.ssl")

        if data.get("rfc2217") not in (None, False):
            kw["rfc2217"] = self.rfc2217(data["rfc2217"], protocol, f"{where}.rfc2217")

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
        self.warn_unknown(data, ("certfile", "keyfile", "ca_certs"), where)
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
        return SslConfig(**files)
