"""``--check``: everything a start would validate, without starting.

The config is read and checked key by key, then the service tree is built
(certificates and keys loaded and matched, endpoint strings and addresses
parsed) on a reactor that is never run, so nothing is opened or bound; port
log directories must be writable."""

from __future__ import annotations

import os
import sys
from typing import Any

from .config import Config, ConfigError, StartupError, load_config


def check_config(path: str) -> str | None:
    """The one error line for the config at ``path``, or None when it is good."""
    try:
        config = load_config(path)
        from twisted.internet import reactor

        from .service import build_service

        build_service(config, reactor)
    except (ConfigError, StartupError) as e:
        return str(e)
    for port in config.ports:
        if port.log is None:
            continue
        target = (
            port.log.path
            if os.path.exists(port.log.path)
            else os.path.dirname(os.path.abspath(port.log.path))
        )
        if not os.access(target, os.W_OK):
            return f"{path}: {port.where}.log.path: {target} is not writable"
    return None


def check_configs(paths: list[str]) -> tuple[list[str], list[str]]:
    """``--check`` with several configs (one daemon each, e.g. the
    instances of ``ser2tcp@.service``): each is checked alone, then what
    more than one of them claims (a device, a port name, a listening place)
    is one problem line each.  Returns (OK lines, problem lines)."""
    ok: list[str] = []
    problems: list[str] = []
    loaded: list[Config] = []
    for path in paths:
        problem = check_config(path)
        if problem is not None:
            problems.append(problem)
            continue
        ok.append(f"{path}: OK")
        loaded.append(load_config(path))
    problems += conflicts(loaded)
    return ok, problems


def _claims(config: Config) -> list[tuple[str, Any, str]]:
    """(what, key, where) for everything a daemon holds alone."""
    claims: list[tuple[str, Any, str]] = []
    for port in config.ports:
        serial = port.serial
        if serial.match is not None:
            claims.append(("the device matching", serial.name, f"{port.where}.serial.match"))
        else:
            device = str(serial.settings.get("port"))
            if "://" not in device:
                claims.append(("the device", os.path.realpath(device), f"{port.where}.serial.port"))
        claims.append(("the port name", port.name, f"{port.where}.name" if port.where else "name"))
    servers = [s for p in config.ports for s in p.servers if s.protocol != "websocket"]
    servers += [h.listen for h in config.http]
    for server in servers:
        if server.endpoint is not None:
            claims.append(("the endpoint", server.endpoint, server.where))
        elif server.protocol == "socket":
            claims.append(("the socket", os.path.realpath(str(server.address)), server.where))
        else:
            address = "" if server.address in (None, "", "*", "0.0.0.0") else server.address
            claims.append(("TCP port", (server.port, address), server.where))
    return claims


def _same(what: str, a: Any, b: Any) -> bool:
    if what != "TCP port":
        return bool(a == b)
    # A wildcard address overlaps every address on the same port.
    return bool(a[0] == b[0] and (a[1] == b[1] or "" in (a[1], b[1])))


def _shown(what: str, key: Any) -> str:
    if what == "TCP port":
        return f"TCP port {key[0]}" + (f" on {key[1]}" if key[1] else "")
    if what == "the port name":
        return f"the port name {key!r}"
    return f"{what} {key}"


def conflicts(configs: list[Config]) -> list[str]:
    """One line per thing that two of ``configs`` both claim."""
    lines = []
    seen: list[tuple[str, Any, str, Config]] = []
    for config in configs:
        for what, key, where in _claims(config):
            for other_what, other_key, other_where, other in seen:
                if other is not config and other_what == what and _same(what, key, other_key):
                    lines.append(
                        f"{config.source}: {where}: {_shown(what, key)} is also claimed by "
                        f"{other.source} {other_where}"
                    )
                    break
            seen.append((what, key, where, config))
    return lines


def report_check(paths: list[str]) -> int:
    """``--check``: print each config's OK (stdout) or problem (stderr);
    the exit code."""
    ok, problems = check_configs(paths)
    for line in ok:
        print(line)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0
