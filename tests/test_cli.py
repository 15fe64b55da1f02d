"""The ``ser2tcp`` command: flags, exit codes, bad configs and log levels."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from typing import Any

from serial.tools import list_ports
from twisted.trial.unittest import SkipTest

from .helpers import (
    REPO,
    SER2TCP,
    TWIST,
    Case,
    free_port,
    listening_anywhere,
    port_config,
    port_name,
    recv_exactly,
    run,
    tcp_server,
    write_config,
)
from .proto_helpers import Pki


def project_version() -> str:
    with open(os.path.join(REPO, "ser2tcp", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'(?m)^__version__\s*=\s*"([^"]+)"', f.read())
    assert match is not None
    return match.group(1)


class FlagTests(Case):
    def test_version(self):
        result = run([SER2TCP, "-V"])
        self.assertEqual((result.returncode, result.stdout), (0, f"ser2tcp {project_version()}\n"))

    def test_help(self):
        result = run([SER2TCP, "-h"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("usage: ser2tcp", result.stdout)
        for flag in ("-c", "-v", "-u", "-V"):
            self.assertIn(flag, result.stdout)

    def test_missing_config_is_a_usage_error(self):
        result = run([SER2TCP])
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stdout, "")
        self.assertIn("usage: ser2tcp", result.stderr)
        self.assertIn("-c/--config", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_empty_config_path(self):
        result = run([SER2TCP, "-c", ""])
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.splitlines()[-1], "ser2tcp: error: -c/--config: the path is empty")

    def test_usb_listing_without_devices(self):
        if any(port.vid is not None for port in list_ports.comports()):
            raise SkipTest("this machine has USB serial devices")
        result = run([SER2TCP, "-u"], cwd=self.tempdir())
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr), (0, "No USB serial devices found\n", "")
        )


def valid_config(port: int) -> dict:
    return {"ports": [port_config("/dev/ttyS-does-not-matter", tcp_server(port))]}


class BadConfigTests(Case):
    """Every bad config: exit code 1, one line naming the file and the key."""

    def setUp(self):
        self.port = free_port()
        self.dir = self.tempdir()

    def check(self, config, *expected, path=None, ports=()):
        """Run on ``config`` (an object to write, or raw ``text``); return the line."""
        if path is None:
            path = os.path.join(self.dir, "cfg.json")
            with open(path, "w", encoding="utf-8") as f:
                f.write(config if isinstance(config, str) else json.dumps(config))
        result = run([SER2TCP, "-c", path])
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(result.stderr.endswith("\n"))
        self.assertEqual(result.stdout, "")
        line = lines[0]
        self.assertTrue(line.startswith(path + ": "), line)
        for text in expected:
            self.assertIn(text, line)
        for port in (self.port, *ports):
            self.assertFalse(listening_anywhere(port), f"port {port} left listening")
        return line

    def mutated(self, change):
        config = copy.deepcopy(valid_config(self.port))
        change(config["ports"][0])
        return config

    def test_missing_file(self):
        self.check(None, "cannot read", path=os.path.join(self.dir, "nope.json"))

    def test_invalid_json(self):
        self.check('{"ports": [}', "invalid JSON", "line 1 column")

    def test_root_is_neither_object_nor_array(self):
        self.check('"ports"', '"ports"', "list of ports")
        self.check("42", "42")

    def test_no_ports(self):
        self.check({"ports": []}, "ports: ", "no ports")
        self.check([], "no ports")

    def test_missing_serial(self):
        self.check(self.mutated(lambda p: p.pop("serial")), "ports[0]: ", '"serial"')

    def test_missing_servers(self):
        self.check(self.mutated(lambda p: p.pop("servers")), "ports[0]: ", '"servers"')

    def test_missing_protocol(self):
        self.check(
            self.mutated(lambda p: p["servers"][0].pop("protocol")), "ports[0].servers[0]: ", "protocol"
        )

    def test_missing_address(self):
        self.check(self.mutated(lambda p: p["servers"][0].pop("address")), "ports[0].servers[0]: ", "address")

    def test_missing_port(self):
        self.check(self.mutated(lambda p: p["servers"][0].pop("port")), "ports[0].servers[0]: ", '"port"')

    def test_neither_port_nor_match(self):
        self.check(self.mutated(lambda p: p["serial"].pop("port")), "ports[0].serial: ", "match")

    def test_empty_match(self):
        self.check(self.mutated(lambda p: p["serial"].update(match={})), "ports[0].serial.match: ")

    def test_unknown_match_key(self):
        line = self.check(
            self.mutated(lambda p: p["serial"].update(match={"colour": "blue"})),
            "ports[0].serial.match.colour: ",
        )
        self.assertIn("vid", line)  # says what is known

    def test_unknown_protocol(self):
        self.check(
            self.mutated(lambda p: p["servers"][0].update(protocol="http")),
            "ports[0].servers[0].protocol: ",
            '"http"',
        )

    def test_lowercase_parity(self):
        self.check(
            self.mutated(lambda p: p["serial"].update(parity="even")), "ports[0].serial.parity: ", '"even"'
        )

    def test_unknown_serial_keyword(self):
        self.check(self.mutated(lambda p: p["serial"].update(speed=9600)), "ports[0].serial.speed: ")

    def test_port_out_of_range(self):
        self.check(
            self.mutated(lambda p: p["servers"][0].update(port=70000)), "ports[0].servers[0].port: ", "70000"
        )

    def test_port_not_a_number(self):
        self.check(
            self.mutated(lambda p: p["servers"][0].update(port="abc")), "ports[0].servers[0].port: ", "abc"
        )

    def test_negative_send_timeout(self):
        self.check(
            self.mutated(lambda p: p["servers"][0].update(send_timeout=-1)),
            "ports[0].servers[0].send_timeout: ",
        )

    def test_negative_buffer_limit(self):
        self.check(
            self.mutated(lambda p: p["servers"][0].update(buffer_limit=-1)),
            "ports[0].servers[0].buffer_limit: ",
        )

    def test_ssl_without_certfile(self):
        keyfile = write_config({}, self.dir, "server.key")  # exists and is readable

        def change(port):
            port["servers"][0].update(protocol="ssl", ssl={"keyfile": keyfile})

        self.check(self.mutated(change), "ports[0].servers[0].ssl.certfile: ")

    def test_unreadable_certificate_file(self):
        keyfile = write_config({}, self.dir, "server.key")
        missing = os.path.join(self.dir, "missing.crt")

        def change(port):
            port["servers"][0].update(protocol="ssl", ssl={"certfile": missing, "keyfile": keyfile})

        self.check(self.mutated(change), "ports[0].servers[0].ssl.certfile: ", missing)

    def test_address_in_use(self):
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        config = self.mutated(lambda p: p["servers"].append(tcp_server(busy_port)))
        self.check(config, "ports[0].servers[1]: ", str(busy_port), "in use")

    def test_endless_config_is_not_read(self):
        self.check(None, "not a regular file", path="/dev/zero")

    def test_two_servers_on_the_same_port(self):
        other = free_port()
        config = {
            "ports": [
                port_config("loop://", tcp_server(self.port)),
                port_config("/dev/ttyS-other", tcp_server(other), tcp_server(self.port)),
            ]
        }
        self.check(
            config, f"ports[1].servers[1].port: 127.0.0.1:{self.port} is already used by ports[0].servers[0]"
        )


UP = b"up-\x00\xff-data"


class LogLevelTests(Case):
    def run_session(self, *flags):
        """A client connects, data goes both ways, the client leaves; the log."""
        pty = self.pty()
        port = free_port()
        daemon = self.ser2tcp([port_config(pty.path, tcp_server(port))], *flags, listen=[port])
        sock = self.connect(port)
        sock.sendall(UP)
        self.assertEqual(pty.read(len(UP)), UP)
        pty.write(b"down-data")
        self.assertEqual(recv_exactly(sock, 9, self.deadline()), b"down-data")
        client = sock.getsockname()[1]
        sock.close()
        daemon.wait_holds(pty.path, held=False)  # the daemon saw the client leave
        self.assertEqual(daemon.stop(), 0)
        return daemon.stderr(), client, pty.path

    def test_default_level_logs_no_clients(self):
        log, _, _ = self.run_session()
        self.assertNotIn("Client connected", log)
        self.assertEqual([line for line in log.splitlines() if line[:2] in ("I:", "D:")], [])

    def test_verbose_logs_clients(self):
        log, client, device = self.run_session("-v")
        self.assertIn(f"I: Client connected: 127.0.0.1:{client} TCP to {port_name(device)} (1 client)\n", log)
        self.assertIn(f"I: Client disconnected: 127.0.0.1:{client} TCP\n", log)
        self.assertNotIn("D:", log)
        self.assertNotIn("down-data", log)
        self.assertNotIn("-data", log)

    def test_very_verbose_logs_data(self):
        log, client, device = self.run_session("-vv")
        self.assertIn(f"I: Client connected: 127.0.0.1:{client} TCP", log)
        debug = [line for line in log.splitlines() if line.startswith("D: ")]
        up = [line for line in debug if repr(UP) in line]
        down = [line for line in debug if repr(b"down-data") in line]
        self.assertEqual(len(up), 1, log)
        self.assertEqual(len(down), 1, log)
        self.assertIn(f"127.0.0.1:{client}", up[0])
        self.assertIn(port_name(device), down[0])


class CheckTests(Case):
    """``--check``: what a start would refuse, without starting."""

    def check(self, config: Any, *argv: str) -> Any:
        path = self.config(config)
        return path, run([*argv, "--check", "-c", path] if argv else [SER2TCP, "--check", "-c", path])

    def test_good_config_even_with_its_port_in_use(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path, result = self.check({"ports": [port_config("/dev/ttyS-x", tcp_server(port))]})
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, f"{path}: OK\n", ""))

    def test_each_kind_of_bad_config(self):
        pki = Pki(self.tempdir())
        bad_tls = {"certfile": pki.server_cert, "keyfile": pki.wrong_key}
        for config, expected in (
            (
                {"ports": [{"serial": {"port": "/dev/x", "baudrate": "fast"}, "servers": []}]},
                "serial.baudrate",
            ),
            (
                {
                    "ports": [
                        port_config(
                            "/dev/x", {"protocol": "ssl", "address": "127.0.0.1", "port": 1, "ssl": bad_tls}
                        )
                    ]
                },
                "does not match the certificate",
            ),
            (
                {"ports": [port_config("/dev/x", {"protocol": "tcp", "endpoint": "nonsense:1"})]},
                "invalid endpoint",
            ),
            (
                {"ports": [port_config("/dev/x", tcp_server(1))], "http": {"port": 8080, "tls": bad_tls}},
                "http[0].tls.keyfile",
            ),
        ):
            path, result = self.check(config)
            self.assertEqual(result.returncode, 1, result.stdout)
            (line,) = result.stderr.splitlines()
            self.assertTrue(line.startswith(f"{path}: "), line)
            self.assertIn(expected, line)
            self.assertEqual(result.stdout, "")

    def test_twist_check(self):
        path, result = self.check(
            {"ports": [port_config("/dev/x", tcp_server(free_port()))]}, TWIST, "ser2tcp"
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, f"{path}: OK"))
