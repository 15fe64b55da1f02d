"""The HTTP side: a ``twisted.web`` resource tree with the status page, the
JSON API and Prometheus metrics, served by every configured HTTP server.

Other parts mount their pages on :class:`WebRoot` (``putChild``).  Every
connection is held to what a status page needs: a request must be complete
within :data:`REQUEST_TIMEOUT` seconds and its body at most
:data:`MAX_BODY` bytes (headers are bounded by Twisted: 16 KiB), or it is
refused with a 4xx and closed.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import IDelayedCall
from twisted.web import http, resource, server, static

from . import _log
from .config_http import HttpConfig
from .ipfilter import IpFilter
from .metrics import make_registry
from .status import PortView, find_client, status_document

log = _log.logger("http")

#: Seconds a request may take to arrive whole.
REQUEST_TIMEOUT = 10.0
#: Largest request body (the API takes none worth more).
MAX_BODY = 64 * 1024


class LimitedChannel(http.HTTPChannel):
    """Twisted's HTTP channel with a deadline for each whole request and a
    bound on its body: a slow or endless request cannot hold the server."""

    _deadline: IDelayedCall | None = None
    _body = 0

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self._handlingRequest:
            self._deadline = self.callLater(REQUEST_TIMEOUT, self._too_slow)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > MAX_BODY:
            self._refuse(b"413 Content Too Large")
            return
        self._body = 0
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        self._body += len(data)
        if self._body > MAX_BODY + 4096:  # chunked: framing on top of the body
            self._refuse(b"413 Content Too Large")
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One header line longer than Twisted's MAX_LENGTH (16 KiB).
        self._refuse(b"431 Request Header Fields Too Large")

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(b"408 Request Timeout")

    def _refuse(self, status: bytes) -> None:
        self._cancel_deadline()
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]
        self.dataReceived = lambda data: None  # type: ignore[method-assign]

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None


class Site(server.Site):
    protocol = LimitedChannel  # type: ignore[assignment]  # a channel class is such a callable
    displayTracebacks = False
    noisy = False

    def log(self, request: Any) -> None:
        pass  # no access log: the API is polled every few seconds

    def startFactory(self) -> None:
        """Twisted's HTTP factory sets up its access log here, with a timer
        that refreshes the log's date every second; without an access log
        neither is needed, and nothing runs while nothing moves."""


def json_response(request: Any, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=1).encode() + b"\n"


class StatusResource(resource.Resource):
    isLeaf = True

    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api

    def render_GET(self, request: Any) -> bytes:
        return json_response(request, 200, status_document(self.api.ports(), self.api.started_at))


class ClientResource(resource.Resource):
    isLeaf = True

    def __init__(self, api: Api, client_id: int | None) -> None:
        super().__init__()
        self.api = api
        self.client_id = client_id

    def render_DELETE(self, request: Any) -> bytes:
        client = find_client(self.api.ports(), self.client_id) if self.client_id is not None else None
        if client is None:
            return json_response(request, 404, {"error": "no such client"})
        who = getattr(request, "ser2tcp_user", None) or "an unauthenticated user"
        log.info(
            "Client {peer}: disconnected over HTTP by {who} from {addr}",
            peer=client.peer,
            who=who,
            addr=request.getClientAddress().host,
        )
        client.disconnect(f"disconnected by {who} over HTTP")
        request.setResponseCode(204)
        return b""


class ClientsResource(resource.Resource):
    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api

    def getChild(self, path: bytes, request: Any) -> resource.IResource:
        try:
            client_id: int | None = int(path)
        except ValueError:
            client_id = None
        return ClientResource(self.api, client_id)


class ReloadResource(resource.Resource):
    """``POST /api/reload``: as SIGHUP, with the outcome in the answer."""

    isLeaf = True

    def __init__(self, reload: Callable[[], str]) -> None:
        super().__init__()
        self.reload = reload

    def render_POST(self, request: Any) -> bytes:
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host") or ""
        if origin and urlsplit(origin).netloc.lower() != host.lower():
            # A form on another site may not use the browser's credentials here.
            return json_response(request, 403, {"error": "origin not allowed"})
        who = getattr(request, "ser2tcp_user", None) or "an unauthenticated user"
        addr = request.getClientAddress().host
        log.info("Reload requested over HTTP by {who} from {addr}", who=who, addr=addr)
        from .reload import ReloadError

        try:
            summary = self.reload()
        except ReloadError as e:
            return json_response(request, 409, {"reloaded": False, "error": str(e)})
        return json_response(request, 200, {"reloaded": True, "summary": summary})


class Api(resource.Resource):
    def __init__(
        self,
        ports: Callable[[], Iterable[PortView]],
        started_at: float,
        reload: Callable[[], str] | None = None,
    ) -> None:
        super().__init__()
        self.ports = ports
        self.started_at = started_at
        self.putChild(b"status", StatusResource(self))
        self.putChild(b"clients", ClientsResource(self))
        if reload is not None:
            self.putChild(b"reload", ReloadResource(reload))


class MetricsPage(resource.Resource):
    """``GET /metrics``: the Prometheus exposition, rendered in the reactor
    thread.  (``prometheus_client.twisted`` serves it from a thread pool,
    where collecting would read the ports while the reactor changes them.)"""

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encode, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return bytes(encode(self.registry))


class Page(resource.Resource):
    """A page shipped in the package (no external resources: gateways are
    often offline)."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.body = importlib.resources.files("ser2tcp").joinpath("static").joinpath(name).read_bytes()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return self.body


class WebRoot(resource.Resource):
    """``/`` (the status page), ``/api/...`` and ``/metrics``."""

    def __init__(
        self,
        ports: Callable[[], Iterable[PortView]],
        started_at: float,
        reload: Callable[[], str] | None = None,
    ) -> None:
        super().__init__()
        self.putChild(b"", Page("index.html"))
        self.putChild(b"api", Api(ports, started_at, reload))
        self.putChild(b"metrics", MetricsPage(make_registry(ports)))
        #: Web terminals mount here: /ws/<endpoint> and /xterm/<endpoint>.
        self.ws = resource.Resource()
        self.xterm = resource.Resource()
        self.putChild(b"ws", self.ws)
        self.putChild(b"xterm", self.xterm)
        vendor = importlib.resources.files("ser2tcp").joinpath("static").joinpath("vendor")
        self.putChild(b"vendor", static.File(str(vendor)))


class Gate(resource.Resource):
    """What every request passes first: ``allow``/``deny`` (403), then the
    credentials (401) unless the path is public."""

    def __init__(
        self,
        tree: resource.Resource,
        guarded: resource.IResource | None,
        ipfilter: IpFilter,
        public: Iterable[bytes] = (),
    ) -> None:
        super().__init__()
        self.tree = tree
        self.guarded = guarded
        self.ipfilter = ipfilter
        self.public = frozenset(public)

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        host = getattr(request.getClientAddress(), "host", "")
        rule = self.ipfilter.refusal(host) if self.ipfilter.active else None
        if rule is not None:
            log.info("HTTP request refused: {host} ({rule})", host=host, rule=rule)
            return resource.ErrorPage(403, "Forbidden", "")
        if self.guarded is None or path in self.public:
            return self.tree.getChildWithDefault(path, request)
        return self.guarded.getChildWithDefault(path, request)

    def render(self, request: Any) -> Any:
        return self.getChildWithDefault(b"", request).render(request)


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def build_site(
    config: HttpConfig, tree: resource.Resource, guarded: resource.IResource | None, clock: Any
) -> Site:
    public = [b"metrics"] if config.metrics_public else []
    # An idle connection (nothing sent yet, or between two requests) is
    # closed as soon as a slow request would be.
    site = Site(Gate(tree, guarded, config.ipfilter, public), reactor=clock, timeout=REQUEST_TIMEOUT)
    return site
