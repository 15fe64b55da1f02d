"""Prometheus metrics, produced with the official ``prometheus_client``.

A collector reads the ports' counters when scraped; the data path does
nothing for metrics but the integer additions the hub does anyway."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .hub import State
from .status import PortView


class PortCollector:
    """Every port's state and counters, read at scrape time."""

    def __init__(self, ports: Callable[[], Iterable[PortView]]) -> None:
        self._ports = ports

    def collect(self) -> Iterator[Metric]:
        is_open = GaugeMetricFamily("ser2tcp_port_open", "1 while the port's device is open", labels=["port"])
        data = CounterMetricFamily(
            "ser2tcp_port_bytes", "Bytes from and to the device", labels=["port", "direction"]
        )
        clients = GaugeMetricFamily("ser2tcp_clients", "Clients connected now", labels=["port", "protocol"])
        joined = CounterMetricFamily(
            "ser2tcp_client_connections", "Clients that joined the port", labels=["port", "protocol"]
        )
        drops = CounterMetricFamily(
            "ser2tcp_client_drops", "Clients cut off or turned away, by reason", labels=["port", "reason"]
        )
        opens = CounterMetricFamily("ser2tcp_device_opens", "Times the device was opened", labels=["port"])
        failures = CounterMetricFamily(
            "ser2tcp_device_open_failures", "Times the device could not be opened", labels=["port"]
        )
        losses = CounterMetricFamily("ser2tcp_device_losses", "Times the device went away", labels=["port"])
        for port in self._ports():
            hub, stats, name = port.hub, port.hub.stats, port.hub.name
            is_open.add_metric([name], 1 if hub.state is State.OPEN else 0)
            data.add_metric([name, "from_device"], stats.bytes_from_device)
            data.add_metric([name, "to_device"], stats.bytes_to_device)
            now = Counter(getattr(s, "protocol", "?") for s in hub.sessions)
            for protocol in sorted({*now, *(a.server.protocol for a in port.admissions)}):
                clients.add_metric([name, protocol], now[protocol])
            for protocol, n in sorted(stats.connections.items()):
                joined.add_metric([name, protocol], n)
            for reason, n in sorted(stats.drops.items()):
                drops.add_metric([name, reason], n)
            opens.add_metric([name], stats.device_opens)
            failures.add_metric([name], stats.device_open_failures)
            losses.add_metric([name], stats.device_losses)
        yield from (is_open, data, clients, joined, drops, opens, failures, losses)


def make_registry(ports: Callable[[], Iterable[PortView]]) -> CollectorRegistry:
    """Our collector and the library's process metrics, in a registry of
    their own (not the library's global one)."""
    registry = CollectorRegistry()
    registry.register(PortCollector(ports))
    ProcessCollector(registry=registry)
    return registry
