"""The status page in a real browser (headless Chromium driven by Selenium)
against the real daemon, with an HTTP server that needs no login."""

from __future__ import annotations

import socket
from typing import Any

from .helpers import (
    TIMEOUT,
    Case,
    Daemon,
    Pty,
    free_port,
    port_config,
    port_name,
    recv_exactly,
    recv_until_closed,
    tcp_server,
)
from .proto_helpers import headless_chromium

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - headless_chromium skips then
    pass


class StatusPageTests(Case):
    def setUp(self) -> None:
        self.tty: Pty = self.pty()
        self.port = free_port()
        self.http = free_port()
        config = {
            "ports": [port_config(self.tty.path, tcp_server(self.port))],
            "http": {"address": "127.0.0.1", "port": self.http},
        }
        self.daemon: Daemon = self.ser2tcp(config, "-v", listen=[self.port, self.http])
        self.name = port_name(self.tty.path)

    def browser(self) -> Any:
        """A headless Chromium with a fresh profile, quit at cleanup."""
        driver = headless_chromium(self.tempdir())
        self.addCleanup(driver.quit)
        driver.get(f"http://127.0.0.1:{self.http}/")
        return driver

    def client(self, n: int) -> socket.socket:
        """The n-th TCP client, joined with the device open."""
        sock = self.connect(self.port)
        self.daemon.wait_output("Client connected", n)
        sock.sendall(b"%d" % n)
        self.assertEqual(self.tty.read(1), b"%d" % n)
        return sock

    def until(self, driver: Any, condition: Any, what: str) -> Any:
        """Wait (bounded) for ``condition(driver)``; stale elements (the
        page redraws every 2 s) count as not yet."""

        def check(d: Any) -> Any:
            try:
                return condition(d)
            except StaleElementReferenceException:
                return False

        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.1).until(check, f"waiting for {what}")

    def section(self, driver: Any) -> Any:
        sections = driver.find_elements(By.CSS_SELECTOR, f'section.port[data-port="{self.name}"]')
        return sections[0] if sections else None

    def state(self, driver: Any) -> str | None:
        section = self.section(driver)
        if section is None:
            return None
        return str(section.find_element(By.CSS_SELECTOR, "h2 .state").text)

    def row_peers(self, driver: Any) -> dict[str, str]:
        """The client rows shown: peer -> client id."""
        rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-client-row]")
        return {
            row.find_element(By.CSS_SELECTOR, "td.peer").text: row.get_attribute("data-client-row")
            for row in rows
        }

    @staticmethod
    def peer(sock: socket.socket) -> str:
        return f"127.0.0.1:{sock.getsockname()[1]}"

    def test_port_and_client_shown(self) -> None:
        sock = self.client(1)
        driver = self.browser()
        self.until(driver, lambda d: self.state(d) == "open", "the port shown open")
        heading = self.section(driver).find_element(By.TAG_NAME, "h2").text
        self.assertTrue(heading.startswith(self.name), heading)
        self.until(driver, lambda d: self.peer(sock) in self.row_peers(d), "the client's row")
        self.assertIn(self.tty.path, self.section(driver).text)
        self.assertEqual(driver.find_element(By.ID, "error").text, "")

    def test_closed_port_then_a_new_client_appears(self) -> None:
        driver = self.browser()
        self.until(driver, lambda d: self.state(d) == "closed", "the port shown closed")
        self.assertEqual(self.row_peers(driver), {})
        sock = self.client(1)
        self.until(driver, lambda d: self.state(d) == "open", "the port shown open without reloading")
        self.until(driver, lambda d: self.peer(sock) in self.row_peers(d), "the new client's row")

    def test_disconnect_button(self) -> None:
        victim, bystander = self.client(1), self.client(2)
        driver = self.browser()
        self.until(
            driver,
            lambda d: {self.peer(victim), self.peer(bystander)} <= set(self.row_peers(d)),
            "both clients' rows",
        )

        def click(d: Any) -> bool:
            client_id = self.row_peers(d)[self.peer(victim)]
            d.find_element(By.CSS_SELECTOR, f'button[data-client="{client_id}"]').click()
            return True

        self.until(driver, click, "the disconnect button clicked")
        self.assertEqual(recv_until_closed(victim, self.deadline()), (b"", "eof"))
        self.until(driver, lambda d: self.peer(victim) not in self.row_peers(d), "the row gone")
        self.assertIn(self.peer(bystander), self.row_peers(driver))
        self.assertEqual(driver.find_element(By.ID, "error").text, "")
        self.daemon.wait_output(f"Client {self.peer(victim)} TCP: disconnected over HTTP")
        # The other client is still a client.
        self.tty.write(b"ok")
        self.assertEqual(recv_exactly(bystander, 2, self.deadline()), b"ok")
