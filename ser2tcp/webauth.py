"""Who may use the HTTP API: people with a login (HTTP Basic, so a browser
asks) and programs with a token (``Authorization: Bearer <token>``).

Twisted's own pieces: a ``twisted.cred`` portal with one checker for both
kinds of credentials, behind ``twisted.web.guard``.  Password hashes are
checked in a thread (scrypt is slow on purpose, and the reactor carries the
serial data); a login that does not exist is checked against a dummy hash,
so that a wrong login is answered no faster than a wrong password."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import Any

from twisted.cred import credentials, error, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from twisted.web import guard, resource
from twisted.web.iweb import ICredentialFactory
from zope.interface import Attribute, Interface, implementer

from . import _log, passwords
from .config_http import TokenConfig, UserConfig

log = _log.logger("http")

#: Verified (login, password) pairs remembered, so that a browser polling
#: the status page does not cost one scrypt a request.
VERIFIED_CACHE = 256


class ITokenCredentials(Interface):
    """A program's token."""

    token = Attribute("bytes: the token as sent")
    peer = Attribute("str: who sent it")


@implementer(ITokenCredentials)
class TokenCredentials:
    def __init__(self, token: bytes, peer: str) -> None:
        self.token = token
        self.peer = peer


class PeerPassword(credentials.UsernamePassword):
    """A login and password, and who sent them (for the log)."""

    def __init__(self, username: bytes, password: bytes, peer: str) -> None:
        super().__init__(username, password)
        self.peer = peer


def _peer(request: Any) -> str:
    address = request.getClientAddress()
    return f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"


@implementer(ICredentialFactory)
class BasicFactory(guard.BasicCredentialFactory):
    def decode(self, response: bytes, request: Any) -> credentials.IUsernamePassword:
        basic = super().decode(response, request)
        return PeerPassword(basic.username, basic.password, _peer(request))


@implementer(ICredentialFactory)
class BearerFactory:
    scheme = b"bearer"

    def getChallenge(self, request: Any) -> dict[str, str]:
        return {"realm": "ser2tcp"}

    def decode(self, response: bytes, request: Any) -> TokenCredentials:
        token = response.strip()
        if not token:
            raise error.LoginFailed("empty bearer token")
        return TokenCredentials(token, _peer(request))


@implementer(ICredentialsChecker)
class Checker:
    """Users' password hashes and programs' tokens; the avatar id says which
    (``user alice``, ``token monitoring``) for the log."""

    credentialInterfaces = (credentials.IUsernamePassword, ITokenCredentials)

    def __init__(self, users: Sequence[UserConfig], tokens: Sequence[TokenConfig], pool: Any = None) -> None:
        self._users = {u.login.encode(): u.password for u in users}
        self._tokens = [(t.token.encode(), t.name) for t in tokens]
        self._pool = pool
        self._secret = os.urandom(32)
        self._verified: dict[bytes, None] = {}

    def requestAvatarId(self, creds: Any) -> defer.Deferred[bytes | tuple[()]]:
        if ITokenCredentials.providedBy(creds):
            for token, name in self._tokens:
                if hmac.compare_digest(token, creds.token):
                    return defer.succeed(f"token {name}".encode())
            return self._failed(creds.peer, "an unknown token")
        login, password = creds.username, creds.password
        key = hmac.new(self._secret, login + b"\0" + password, hashlib.sha256).digest()
        if key in self._verified:
            return defer.succeed(b"user " + login)
        stored = self._users.get(login, passwords.DUMMY)
        d = self._run(passwords.verify, stored, password.decode("utf-8", "replace"))

        def checked(ok: bool) -> Any:
            if ok and login in self._users:
                self._remember(key)
                return b"user " + login
            return self._failed(creds.peer, f"login {login.decode('utf-8', 'replace')!r}")

        return d.addCallback(checked)

    def _run(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        if self._pool is None:
            return defer.maybeDeferred(f, *args)
        from twisted.internet import reactor

        return threads.deferToThreadPool(reactor, self._pool, f, *args)  # type: ignore[arg-type]

    def _remember(self, key: bytes) -> None:
        self._verified[key] = None
        while len(self._verified) > VERIFIED_CACHE:
            self._verified.pop(next(iter(self._verified)))

    def _failed(self, peer: str, what: str) -> defer.Deferred[bytes | tuple[()]]:
        log.info("HTTP login failed from {peer}: {what}", peer=peer, what=what)
        return defer.fail(error.UnauthorizedLogin())


@implementer(portal.IRealm)
class Realm:
    """Every authenticated user or program gets the same resource tree; the
    request remembers who it is, for the log of what they did."""

    def __init__(self, tree: resource.IResource) -> None:
        self.tree = tree

    def requestAvatar(
        self, avatar_id: bytes | tuple[()], mind: Any, *interfaces: Any
    ) -> tuple[Any, Any, Any]:
        if resource.IResource not in interfaces or not isinstance(avatar_id, bytes):
            raise NotImplementedError()
        return resource.IResource, _As(self.tree, avatar_id.decode("utf-8", "replace")), lambda: None


@implementer(resource.IResource)
class _As(resource.Resource):
    """The tree, seen by one authenticated user."""

    def __init__(self, tree: Any, who: str) -> None:
        super().__init__()
        self.tree = tree
        self.who = who

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        request.ser2tcp_user = self.who
        return self.tree.getChildWithDefault(path, request)

    def render(self, request: Any) -> Any:
        request.ser2tcp_user = self.who
        return self.tree.render(request)


def guarded(tree: resource.IResource, checker: Checker) -> resource.IResource:
    """``tree`` behind Basic and Bearer authentication."""
    realm_portal = portal.Portal(Realm(tree), [checker])
    return guard.HTTPAuthSessionWrapper(realm_portal, [BasicFactory(b"ser2tcp"), BearerFactory()])
