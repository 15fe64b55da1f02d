from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

ser2tcp = ServiceMaker(
    "ser2tcp", "ser2tcp.tap", "Share serial ports over TCP, TELNET, TLS and Unix sockets", "ser2tcp"
)
ser2tcp_reactor = Reactor("ser2tcp", "ser2tcp.reactor", "epoll without per-event log context (Linux)")
