"""The ``servers`` of a port: where each listens, its protocol's keys, and
who may connect."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .config_check import Invalid, ParserBase, at_key, choice, count, is_int, is_number, show
from .config_model import (
    ACCESS_MODES,
    DEFAULT_HALF_CLOSE,
    DEFAULT_KEEPALIVE,
    DEFAULT_SEND_TIMEOUT,
    NAME,
    ON_FULL,
    PROTOCOL_ALIASES,
    PROTOCOL_ONLY,
    PROTOCOLS,
    RFC2217_POLICIES,
    SERVER_KEYS,
    PortConfig,
    ServerConfig,
    SslConfig,
)
from .ipfilter import IpFilter, parse_network


def check_listeners_unique(ports: Sequence[PortConfig]) -> None:
    """Two servers of one config at one place is a config error naming both:
    binding the second would fail with a misleading "in use by another
    process" (it is this process)."""
    seen: dict[tuple[Any, ...], str] = {}
    for port in ports:
        for server in port.servers:
            if server.protocol == "websocket":
                place: tuple[Any, ...] = ("websocket", server.endpoint)
                at, shown = f"{server.where}.endpoint", f"/ws/{server.endpoint}"
                if place in seen:
                    raise Invalid(at, f"{shown} is already used by {seen[place]}")
                seen[place] = server.where
                continue
            if server.endpoint is not None:
                continue  # the user's own string: Twisted says what is wrong
            if server.protocol == "socket":
                path = str(server.address)
                directory, name = os.path.split(os.path.abspath(path))
                place = ("unix", os.path.join(os.path.realpath(directory), name))
                at, shown = f"{server.where}.address", path
            else:
                place = ("tcp", server.address, server.port)
                at, shown = f"{server.where}.port", server.label.split(" ", 1)[1]
            if place in seen:
                raise Invalid(at, f"{shown} is already used by {seen[place]}")
            seen[place] = server.where


class ServerParser(ParserBase):
    def server(self, data: Any, where: str) -> ServerConfig:
        if not isinstance(data, dict):
            raise Invalid(where, f"expected an object, got {show(data)}")
        self.warn_unknown(data, SERVER_KEYS, where)
        if "protocol" not in data:
            raise Invalid(
                where, 'missing "protocol" (one of ' + ", ".join((*PROTOCOLS, *PROTOCOL_ALIASES)) + ")"
            )
        protocol = data["protocol"]
        if not isinstance(protocol, str) or protocol.lower() not in (*PROTOCOLS, *PROTOCOL_ALIASES):
            raise Invalid(
                f"{where}.protocol",
                "expected one of " + ", ".join((*PROTOCOLS, *PROTOCOL_ALIASES)) + f", got {show(protocol)}",
            )
        protocol = PROTOCOL_ALIASES.get(protocol.lower(), protocol.lower())
        self.check_belongs(data, protocol, where)
        kw: dict[str, Any] = {"protocol": protocol, "where": where}

        if protocol == "websocket":
            # Not a Twisted endpoint: the path segment of /ws/<endpoint> on
            # every HTTP server, as the newer original spells it.
            endpoint = data.get("endpoint")
            if not isinstance(endpoint, str) or not NAME.match(endpoint):
                raise Invalid(
                    f"{where}.endpoint",
                    f"expected a URL path segment (1-64 of A-Z a-z 0-9 . _ -), got {show(endpoint)}",
                )
            kw["endpoint"] = endpoint
            kw["settings"] = choice(data.get("settings", "apply"), RFC2217_POLICIES, f"{where}.settings")
        elif data.get("endpoint") is not None:
            endpoint = data["endpoint"]
            if not isinstance(endpoint, str) or not endpoint.strip():
                raise Invalid(f"{where}.endpoint", f"expected an endpoint string, got {show(endpoint)}")
            kw["endpoint"] = endpoint
        elif protocol == "socket":
            kw["address"] = self.socket_path(data, where)
        else:
            if "address" not in data:
                raise Invalid(where, 'missing "address" (or "endpoint")')
            address = data["address"]
            if not isinstance(address, str):
                raise Invalid(f"{where}.address", f"expected a host name or IP address, got {show(address)}")
            if "port" not in data:
                raise Invalid(where, 'missing "port"')
            port = data["port"]
            if not is_int(port) or not 1 <= port <= 65535:
                raise Invalid(f"{where}.port", f"expected an integer 1-65535, got {show(port)}")
            kw["address"] = address
            kw["port"] = port

        send_timeout = data.get("send_timeout")
        if send_timeout is None:
            send_timeout = DEFAULT_SEND_TIMEOUT
        elif not is_number(send_timeout) or send_timeout < 0:
            raise Invalid(
                f"{where}.send_timeout",
                f"expected a number of seconds >= 0, got {show(send_timeout)}",
            )
        kw["send_timeout"] = float(send_timeout)

        buffer_limit = data.get("buffer_limit")
        if buffer_limit is not None and (not is_int(buffer_limit) or buffer_limit < 0):
            raise Invalid(
                f"{where}.buffer_limit",
                f"expected a number of bytes >= 0 or null, got {show(buffer_limit)}",
            )
        kw["buffer_limit"] = buffer_limit or None  # 0 means unlimited, as upstream

        handshake_timeout = data.get("handshake_timeout")
        if handshake_timeout is not None:
            if not is_number(handshake_timeout) or handshake_timeout <= 0:
                raise Invalid(
                    f"{where}.handshake_timeout",
                    f"expected a number of seconds > 0, got {show(handshake_timeout)}",
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
                raise Invalid(
                    f"{where}.mode", f'expected an octal string such as "0660", got {show(mode)}'
                ) from None
        return ServerConfig(**kw)

    def check_belongs(self, data: Mapping[str, Any], protocol: str, where: str) -> None:
        """Refuse keys of another protocol rather than ignore them: an ``ssl``
        block on a ``tcp`` server would otherwise start a cleartext server
        whose user believes it encrypted."""
        for key, protocols in PROTOCOL_ONLY.items():
            if data.get(key) is not None and protocol not in protocols:
                raise Invalid(
                    at_key(where, key), f"only for {' and '.join(protocols)} servers, not {protocol}"
                )
        if data.get("endpoint") is not None and protocol != "websocket":
            for key in ("address", "port", "mode"):
                if data.get(key) is not None:
                    raise Invalid(
                        at_key(where, key),
                        'not used with "endpoint" (the endpoint string says where to listen)',
                    )

    def admission(self, data: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Who may connect, how many, what they may do, and how long a
        silent or half-closed peer is kept."""
        kw: dict[str, Any] = {}
        lists = {}
        for key in ("allow", "deny"):
            lists[key] = self.networks(data.get(key), at_key(where, key))
        kw["ipfilter"] = IpFilter.from_lists(**lists)
        kw["max_connections"] = count(data.get("max_connections"), f"{where}.max_connections")
        kw["on_full"] = choice(data.get("on_full", "refuse"), ON_FULL, f"{where}.on_full")
        kw["access"] = choice(data.get("access", "rw"), ACCESS_MODES, f"{where}.access")
        keepalive = data.get("keepalive", DEFAULT_KEEPALIVE)
        if keepalive is not None and (not is_number(keepalive) or keepalive < 0):
            raise Invalid(
                f"{where}.keepalive", f"expected a number of seconds >= 0 or null, got {show(keepalive)}"
            )
        kw["keepalive"] = float(keepalive) if keepalive else None
        half_close = data.get("half_close", DEFAULT_HALF_CLOSE)
        if not is_number(half_close) or half_close < 0:
            raise Invalid(f"{where}.half_close", f"expected a number of seconds >= 0, got {show(half_close)}")
        kw["half_close"] = float(half_close)
        replay = data.get("replay", False)
        if not isinstance(replay, bool):
            raise Invalid(f"{where}.replay", f"expected true or false, got {show(replay)}")
        kw["replay"] = replay
        return kw

    def networks(self, data: Any, where: str) -> list[str]:
        if data is None:
            return []
        if not isinstance(data, list):
            raise Invalid(
                where, f'expected a list of IP addresses or networks ("10.0.0.0/8"), got {show(data)}'
            )
        for i, entry in enumerate(data):
            if not isinstance(entry, str):
                raise Invalid(f"{where}[{i}]", f"expected an IP address or network, got {show(entry)}")
            try:
                parse_network(entry)
            except ValueError:
                raise Invalid(f"{where}[{i}]", f"not an IP address or network: {show(entry)}") from None
        return data

    def tls_block(self, data: Mapping[str, Any], where: str) -> SslConfig:
        """The ``ssl`` block, or ``tls`` as the newer original spells it."""
        if data.get("ssl") is not None and data.get("tls") is not None:
            raise Invalid(f"{where}.tls", 'give "ssl" or "tls", not both')
        key = "tls" if data.get("tls") is not None else "ssl"
        return replace(self.ssl(data.get(key), at_key(where, key)), where=at_key(where, key))

    def rfc2217(self, data: Any, protocol: str, where: str) -> str:
        if protocol != "telnet":
            raise Invalid(where, f'RFC 2217 needs "protocol": "telnet", not {show(protocol)}')
        if data is True:
            return "apply"
        if not isinstance(data, dict):
            raise Invalid(where, f'expected true or {{"settings": "apply"}}, got {show(data)}')
        self.warn_unknown(data, ("settings",), where)
        policy = data.get("settings", "apply")
        if policy not in RFC2217_POLICIES:
            raise Invalid(
                f"{where}.settings",
                "expected one of " + ", ".join(RFC2217_POLICIES) + f", got {show(policy)}",
            )
        return str(policy)

    def socket_path(self, data: Mapping[str, Any], where: str) -> str:
        if "address" not in data:
            raise Invalid(where, 'missing "address" (the Unix socket path)')
        path = data["address"]
        if not isinstance(path, str) or not path:
            raise Invalid(f"{where}.address", f"expected a socket file path, got {show(path)}")
        try:
            encoded = path.encode()
        except UnicodeEncodeError:
            raise Invalid(f"{where}.address", f"not a valid file name: {show(path)}") from None
        if len(encoded) > 107:
            raise Invalid(f"{where}.address", "socket path longer than 107 bytes")
        return path

    def ssl(self, data: Any, where: str) -> SslConfig:
        if not isinstance(data, dict):
            raise Invalid(where, 'protocol "ssl" requires "ssl": {"certfile": ..., "keyfile": ...}')
        self.warn_unknown(data, ("certfile", "keyfile", "ca_certs", "allow_client_cn"), where)
        files = {}
        for key in ("certfile", "keyfile", "ca_certs"):
            value = data.get(key)
            if value is None and key == "ca_certs":
                continue
            if not isinstance(value, str) or not value:
                raise Invalid(
                    f"{where}.{key}",
                    "SSL requires certfile and keyfile"
                    if value is None
                    else f"expected a file path, got {show(value)}",
                )
            try:
                with open(value, "rb"):
                    pass
            except OSError as e:
                shown = value if value.isprintable() else show(value)
                raise Invalid(f"{where}.{key}", f"cannot read {shown}: {e.strerror or e}") from None
            except (ValueError, UnicodeError):
                raise Invalid(f"{where}.{key}", f"not a valid file name: {show(value)}") from None
            files[key] = value
        names = data.get("allow_client_cn")
        if names is None:
            return SslConfig(files["certfile"], files["keyfile"], files.get("ca_certs"))
        at = f"{where}.allow_client_cn"
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise Invalid(at, f"expected a list of certificate Common Names, got {show(names)}")
        if "ca_certs" not in files:
            raise Invalid(at, 'needs "ca_certs": without client certificates there is no name to check')
        return SslConfig(files["certfile"], files["keyfile"], files["ca_certs"], tuple(names))
