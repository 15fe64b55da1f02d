from twisted.application.service import ServiceMaker

ser2tcp = ServiceMaker(
    "ser2tcp", "ser2tcp.tap", "Share serial ports over TCP, TELNET, TLS and Unix sockets", "ser2tcp"
)
