"""Turn a ser2tcp JSON config into frozen, validated dataclasses.

Everything a user can get wrong is checked here, at startup, so that a bad
config is one clear line naming the file and the key path, and never a crash
when the first client connects.  This module imports no Twisted: it is pure
data and can be tested and reused (``--check`` tools, benchmarks) alone.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .config_check import Invalid, choice, count, is_int, is_number, show
from .config_http import HttpParser
from .config_model import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_REOPEN_INTERVAL,
    DEFAULT_SEND_TIMEOUT,
    LINE_KEYS,
    LOG_KEYS,
    MATCH_KEYS,
    MAX_CONFIG_BYTES,
    MAX_SCROLLBACK,
    NAME,
    ON_LOSS,
    OPEN_MODES,
    PORT_KEYS,
    PROTOCOLS,
    SERIAL_KEYS,
    Config,
    ConfigError,
    LogConfig,
    PortConfig,
    SerialConfig,
    ServerConfig,
    SslConfig,
    StartupError,
)
from .config_serial import SerialParser
from .config_server import check_listeners_unique

#: Keys of the config object.
ROOT_KEYS = ("ports", "http", "users", "tokens")


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
        extra = data if isinstance(data, dict) else {}
        http = parser.http(extra.get("http"))
        users = parser.users(extra.get("users"))
        tokens = parser.tokens(extra.get("tokens"))
        if not http:
            for port in ports:
                for server in port.servers:
                    if server.protocol == "websocket":
                        raise Invalid(
                            f"{server.where}.protocol",
                            'a websocket server is served by the HTTP servers: add an "http" section',
                        )
    except Invalid as e:
        raise ConfigError(
            f"{source}: {e.where}: {e.problem}" if e.where else f"{source}: {e.problem}"
        ) from None
    return Config(
        ports=ports, warnings=tuple(parser.warnings), source=source, http=http, users=users, tokens=tokens
    )


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
            raise Invalid(at, f"{path} is the device of {seen[real]} too")
        seen[real] = at


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
                raise Invalid(
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


class _Parser(SerialParser, HttpParser):
    """The root and the ports; the serial section and the servers are
    parsed by the mixins of their modules."""

    def root(self, data: Any) -> tuple[PortConfig, ...]:
        if isinstance(data, dict):
            self.warn_unknown(data, ROOT_KEYS, "")
            ports = data.get("ports", [])
            where = "ports"
            if not isinstance(ports, list):
                raise Invalid(where, f"expected a list of ports, got {show(ports)}")
        elif isinstance(data, list):
            ports, where = data, ""
        else:
            raise Invalid(
                "",
                f'expected a JSON object with "ports" or a list of ports, got {show(data)}',
            )
        if not ports:
            raise Invalid(where, "no ports configured")
        parsed = tuple(self.port(p, f"{where}[{i}]" if where else f"[{i}]") for i, p in enumerate(ports))
        check_listeners_unique(parsed)
        _check_devices_unique(parsed)
        return _name_ports(parsed)

    def port(self, data: Any, where: str) -> PortConfig:
        if not isinstance(data, dict):
            raise Invalid(where, f"expected an object, got {show(data)}")
        self.warn_unknown(data, PORT_KEYS, where)
        for key in ("serial", "servers"):
            if key not in data:
                raise Invalid(where, f'missing "{key}"')
        servers = data["servers"]
        if not isinstance(servers, list):
            raise Invalid(f"{where}.servers", f"expected a list, got {show(servers)}")
        if not servers:
            self.warnings.append(f"{self.source}: {where}.servers: empty, nobody can reach this port")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or not NAME.match(name)):
            raise Invalid(f"{where}.name", f"expected 1-64 characters of A-Z a-z 0-9 . _ -, got {show(name)}")
        interval = data.get("reopen_interval", DEFAULT_REOPEN_INTERVAL)
        if not is_number(interval) or interval <= 0:
            raise Invalid(
                f"{where}.reopen_interval", f"expected a number of seconds > 0, got {show(interval)}"
            )
        scrollback = data.get("scrollback", 0)
        if not is_int(scrollback) or not 0 <= scrollback <= MAX_SCROLLBACK:
            raise Invalid(
                f"{where}.scrollback",
                f"expected a number of bytes 0-{MAX_SCROLLBACK}, got {show(scrollback)}",
            )
        return PortConfig(
            serial=self.serial(data["serial"], f"{where}.serial"),
            servers=tuple(self.server(s, f"{where}.servers[{i}]") for i, s in enumerate(servers)),
            max_connections=count(data.get("max_connections"), f"{where}.max_connections"),
            name=name or "",
            open=choice(data.get("open", "on_demand"), OPEN_MODES, f"{where}.open"),
            on_loss=choice(data.get("on_loss", "close"), ON_LOSS, f"{where}.on_loss"),
            reopen_interval=float(interval),
            log=self.log(data.get("log"), f"{where}.log"),
            scrollback=scrollback,
            where=where,
        )

    def log(self, data: Any, where: str) -> LogConfig | None:
        if data is None:
            return None
        if not isinstance(data, dict):
            raise Invalid(where, f'expected {{"path": ...}}, got {show(data)}')
        self.warn_unknown(data, LOG_KEYS, where)
        path = data.get("path")
        if not isinstance(path, str) or not path:
            raise Invalid(f"{where}.path", f"expected a file path, got {show(path)}")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise Invalid(f"{where}.path", f"the directory {directory} does not exist")
        timestamps = data.get("timestamps", True)
        if not isinstance(timestamps, bool):
            raise Invalid(f"{where}.timestamps", f"expected true or false, got {show(timestamps)}")
        sizes = {}
        for key, default, least in (("max_bytes", LogConfig.max_bytes, 0), ("backups", LogConfig.backups, 1)):
            value = data.get(key, default)
            if not is_int(value) or value < least:
                raise Invalid(f"{where}.{key}", f"expected a whole number >= {least}, got {show(value)}")
            sizes[key] = value
        return LogConfig(path=path, timestamps=timestamps, **sizes)


__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_SEND_TIMEOUT",
    "LINE_KEYS",
    "MATCH_KEYS",
    "MAX_CONFIG_BYTES",
    "PROTOCOLS",
    "SERIAL_KEYS",
    "Config",
    "ConfigError",
    "LogConfig",
    "PortConfig",
    "SerialConfig",
    "ServerConfig",
    "SslConfig",
    "StartupError",
    "derived_name",
    "load_config",
    "parse_config",
]
