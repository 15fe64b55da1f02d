"""``--check``: everything a start would validate, without starting.

The config is read and checked key by key, then the service tree is built
(certificates and keys loaded and matched, endpoint strings and addresses
parsed) on a reactor that is never run, so nothing is opened or bound; port
log directories must be writable."""

from __future__ import annotations

import os

from .config import ConfigError, StartupError, load_config


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
