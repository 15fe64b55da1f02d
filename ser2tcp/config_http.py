"""The HTTP side of a config: ``http`` servers, ``users`` and ``tokens``.

Spelled as in the newer original ser2tcp (3.x), so its configs carry over:
``"http"`` is a list of servers (or one object), ``"users"`` hold password
hashes (never plain text), ``"tokens"`` are for programs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import passwords
from .config_check import Invalid, at_key, is_int, show
from .config_model import ServerConfig
from .config_server import ServerParser
from .ipfilter import IpFilter

HTTP_KEYS = ("name", "address", "port", "endpoint", "ssl", "tls", "allow", "deny", "metrics_public")
DEFAULT_HTTP_PORT = 8080


@dataclass(frozen=True)
class HttpConfig:
    #: Where it listens, as a serial server would (protocol "tcp" or "ssl").
    listen: ServerConfig
    ipfilter: IpFilter = IpFilter()
    #: /metrics needs no credentials on this server.
    metrics_public: bool = False


@dataclass(frozen=True)
class UserConfig:
    login: str
    password: str  # a hash (ser2tcp --hash-password)


@dataclass(frozen=True)
class TokenConfig:
    token: str
    name: str


class HttpParser(ServerParser):
    """Reuses the servers' checks (TLS blocks, allow/deny) for HTTP servers."""

    def http(self, data: Any) -> tuple[HttpConfig, ...]:
        if data is None:
            return ()
        servers = [data] if isinstance(data, dict) else data
        if not isinstance(servers, list):
            raise Invalid("http", f"expected a list of HTTP servers or one, got {show(data)}")
        return tuple(self.http_server(s, f"http[{i}]") for i, s in enumerate(servers))

    def http_server(self, data: Any, where: str) -> HttpConfig:
        if not isinstance(data, dict):
            raise Invalid(where, f"expected an object, got {show(data)}")
        self.warn_unknown(data, HTTP_KEYS, where)
        tls = data.get("ssl") is not None or data.get("tls") is not None
        kw: dict[str, Any] = {"protocol": "ssl" if tls else "tcp", "where": where}
        if data.get("endpoint") is not None:
            endpoint = data["endpoint"]
            if not isinstance(endpoint, str) or not endpoint.strip():
                raise Invalid(f"{where}.endpoint", f"expected an endpoint string, got {show(endpoint)}")
            for key in ("address", "port"):
                if data.get(key) is not None:
                    raise Invalid(at_key(where, key), 'not used with "endpoint"')
            kw["endpoint"] = endpoint
        else:
            address = data.get("address", "0.0.0.0")
            if not isinstance(address, str):
                raise Invalid(f"{where}.address", f"expected a host name or IP address, got {show(address)}")
            port = data.get("port", DEFAULT_HTTP_PORT)
            if not is_int(port) or not 1 <= port <= 65535:
                raise Invalid(f"{where}.port", f"expected an integer 1-65535, got {show(port)}")
            kw.update(address=address, port=port)
        if tls:
            kw["ssl"] = self.tls_block(data, where)
        public = data.get("metrics_public", False)
        if not isinstance(public, bool):
            raise Invalid(f"{where}.metrics_public", f"expected true or false, got {show(public)}")
        rules = {key: self.networks(data.get(key), at_key(where, key)) for key in ("allow", "deny")}
        return HttpConfig(
            listen=ServerConfig(**kw), ipfilter=IpFilter.from_lists(**rules), metrics_public=public
        )

    def users(self, data: Any) -> tuple[UserConfig, ...]:
        if data is None:
            return ()
        if not isinstance(data, list):
            raise Invalid("users", f'expected a list of {{"login": ..., "password": ...}}, got {show(data)}')
        users: list[UserConfig] = []
        for i, entry in enumerate(data):
            where = f"users[{i}]"
            if not isinstance(entry, dict):
                raise Invalid(where, f"expected an object, got {show(entry)}")
            self.warn_unknown(entry, ("login", "password", "admin", "session_timeout"), where)
            login, password = entry.get("login"), entry.get("password")
            if not isinstance(login, str) or not login or ":" in login:
                raise Invalid(f"{where}.login", f"expected a name without ':', got {show(login)}")
            if any(u.login == login for u in users):
                raise Invalid(f"{where}.login", f"{login!r} is listed twice")
            if not isinstance(password, str):
                raise Invalid(f"{where}.password", "expected a hash from ser2tcp --hash-password")
            problem = passwords.check_format(password)
            if problem is not None:
                raise Invalid(f"{where}.password", problem)
            if passwords.is_weak(password):
                self.warnings.append(
                    f"{self.source}: {where}.password: a sha256 hash is fast to brute-force; "
                    "replace it with the output of ser2tcp --hash-password"
                )
            users.append(UserConfig(login, password))
        return tuple(users)

    def tokens(self, data: Any) -> tuple[TokenConfig, ...]:
        if data is None:
            return ()
        if not isinstance(data, list):
            raise Invalid("tokens", f'expected a list of {{"token": ..., "name": ...}}, got {show(data)}')
        tokens: list[TokenConfig] = []
        for i, entry in enumerate(data):
            where = f"tokens[{i}]"
            if not isinstance(entry, dict):
                raise Invalid(where, f"expected an object, got {show(entry)}")
            self.warn_unknown(entry, ("token", "name"), where)
            token, name = entry.get("token"), entry.get("name", f"token {i}")
            if not isinstance(token, str) or len(token) < 16 or not token.isprintable() or " " in token:
                raise Invalid(
                    f"{where}.token", "expected a secret of at least 16 printable characters, no spaces"
                )
            if not isinstance(name, str) or not name:
                raise Invalid(f"{where}.name", f"expected a name, got {show(name)}")
            tokens.append(TokenConfig(token, name))
        return tuple(tokens)
