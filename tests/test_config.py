"""Tests for ser2tcp.config: every check a user's JSON config goes through."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import serial
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    MATCH_KEYS,
    MAX_CONFIG_BYTES,
    SERIAL_KEYS,
    Config,
    ConfigError,
    LogConfig,
    PortConfig,
    SerialConfig,
    ServerConfig,
    SslConfig,
    load_config,
    parse_config,
)


def tcp(**extra: Any) -> dict[str, Any]:
    """A valid TCP server entry, with ``extra`` keys added or replaced."""
    server: dict[str, Any] = {"protocol": "tcp", "address": "127.0.0.1", "port": 10001}
    server.update(extra)
    return server


def one_port(serial_cfg: Any = None, servers: Any = None, **port_extra: Any) -> dict[str, Any]:
    """A config object with one port."""
    port: dict[str, Any] = {
        "serial": {"port": "/dev/ttyUSB0"} if serial_cfg is None else serial_cfg,
        "servers": [tcp()] if servers is None else servers,
    }
    port.update(port_extra)
    return {"ports": [port]}


def without_where(config: Config) -> tuple[PortConfig, ...]:
    """The ports of ``config``, with the (message-only) ``where`` fields blanked."""
    return tuple(
        dataclasses.replace(
            port,
            where="",
            servers=tuple(dataclasses.replace(s, where="") for s in port.servers),
        )
        for port in config.ports
    )


class ConfigTestCase(SynchronousTestCase):
    def error(self, data: Any, source: str = "cfg.json") -> str:
        """The message of the ConfigError that parsing ``data`` raises."""
        with self.assertRaises(ConfigError) as caught:
            parse_config(data, source=source)
        return self.checked_message(caught.exception, source)

    def load_error(self, path: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        return self.checked_message(caught.exception, path)

    def checked_message(self, exc: ConfigError, source: str) -> str:
        message = str(exc)
        self.assertNotIn("\n", message)
        self.assertNotIn("\r", message)
        self.assertTrue(message.startswith(source + ": "), message)
        return message

    def server(self, **extra: Any) -> ServerConfig:
        """The one ServerConfig of a config whose only server is tcp(**extra)."""
        config = parse_config(one_port(servers=[tcp(**extra)]))
        return config.ports[0].servers[0]

    def settings(self, serial_cfg: dict[str, Any]) -> dict[str, Any]:
        config = parse_config(one_port(serial_cfg=serial_cfg))
        return dict(config.ports[0].serial.settings)

    def write(self, text: str | bytes) -> str:
        path = self.mktemp()
        mode = "wb" if isinstance(text, bytes) else "w"
        with open(path, mode) as f:
            f.write(text)
        return path


class RootTests(ConfigTestCase):
    def test_object_root(self) -> None:
        config = parse_config(one_port(), source="cfg.json")
        self.assertIsInstance(config, Config)
        self.assertEqual(config.source, "cfg.json")
        self.assertEqual(config.warnings, ())
        self.assertEqual(len(config.ports), 1)
        port = config.ports[0]
        self.assertEqual(port.serial, SerialConfig(settings={"port": "/dev/ttyUSB0"}, match=None))
        self.assertEqual(port.where, "ports[0]")
        self.assertEqual(
            port.servers,
            (
                ServerConfig(
                    protocol="tcp",
                    address="127.0.0.1",
                    port=10001,
                    send_timeout=DEFAULT_SEND_TIMEOUT,
                    buffer_limit=None,
                    handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT,
                    where="ports[0].servers[0]",
                ),
            ),
        )

    def test_legacy_array_root_is_the_same_config(self) -> None:
        ports = [
            {
                "serial": {"port": "/dev/ttyUSB0", "baudrate": 115200, "parity": "EVEN"},
                "servers": [tcp(), tcp(protocol="TELNET", port=10002, send_timeout=1)],
            },
            {
                "serial": {"match": {"vid": 0x303A, "serial_number": "AB*"}},
                "servers": [{"protocol": "socket", "address": "/tmp/s.sock", "mode": "0660"}],
            },
        ]
        from_object = parse_config({"ports": ports}, source="a.json")
        from_array = parse_config(ports, source="a.json")
        self.assertEqual(without_where(from_object), without_where(from_array))
        self.assertEqual(from_object.warnings, from_array.warnings)
        # Only the paths used in messages differ, and each names its own layout.
        self.assertEqual([p.where for p in from_object.ports], ["ports[0]", "ports[1]"])
        self.assertEqual([p.where for p in from_array.ports], ["[0]", "[1]"])
        self.assertEqual(from_array.ports[0].servers[1].where, "[0].servers[1]")
        self.assertEqual(from_object.ports[0].servers[1].where, "ports[0].servers[1]")

    def test_legacy_array_errors_name_the_index(self) -> None:
        message = self.error([{"serial": {"port": "/dev/x"}, "servers": [tcp(port=0)]}])
        self.assertEqual(message, "cfg.json: [0].servers[0].port: expected an integer 1-65535, got 0")

    def test_root_neither_object_nor_array(self) -> None:
        for data in (42, "ports", None, True, 1.5):
            message = self.error(data)
            self.assertIn('expected a JSON object with "ports" or a list of ports', message)
            self.assertIn(json.dumps(data), message)

    def test_no_ports(self) -> None:
        self.assertEqual(self.error({"ports": []}), "cfg.json: ports: no ports configured")
        self.assertEqual(self.error({}), "cfg.json: ports: no ports configured")
        self.assertEqual(self.error([]), "cfg.json: no ports configured")

    def test_ports_not_a_list(self) -> None:
        self.assertEqual(
            self.error({"ports": {"serial": {}}}),
            'cfg.json: ports: expected a list of ports, got {"serial": {}}',
        )

    def test_port_not_an_object(self) -> None:
        self.assertEqual(self.error({"ports": ["x"]}), 'cfg.json: ports[0]: expected an object, got "x"')

    def test_missing_serial(self) -> None:
        self.assertEqual(
            self.error({"ports": [{"servers": [tcp()]}]}), 'cfg.json: ports[0]: missing "serial"'
        )

    def test_missing_servers(self) -> None:
        self.assertEqual(
            self.error({"ports": [{"serial": {"port": "/dev/x"}}]}), 'cfg.json: ports[0]: missing "servers"'
        )

    def test_servers_not_a_list(self) -> None:
        message = self.error(one_port(servers=tcp()))
        self.assertTrue(message.startswith("cfg.json: ports[0].servers: expected a list, got {"), message)

    def test_empty_servers_is_a_warning(self) -> None:
        config = parse_config(one_port(servers=[]), source="cfg.json")
        self.assertEqual(config.ports[0].servers, ())
        self.assertEqual(config.warnings, ("cfg.json: ports[0].servers: empty, nobody can reach this port",))

    def test_second_port_errors_name_it(self) -> None:
        data = one_port()
        data["ports"].append({"serial": {"port": "/dev/y"}, "servers": [tcp(protocol="udp")]})
        message = self.error(data)
        self.assertTrue(message.startswith("cfg.json: ports[1].servers[0].protocol: "), message)


class UnknownKeyTests(ConfigTestCase):
    def test_unknown_keys_warn_with_their_path(self) -> None:
        data = one_port(servers=[tcp(foo=1), tcp(port=10002)], colour="red")
        data["version"] = 2
        config = parse_config(data, source="cfg.json")
        self.assertEqual(
            sorted(config.warnings),
            sorted(
                [
                    "cfg.json: version: unknown key, ignored",
                    "cfg.json: ports[0].colour: unknown key, ignored",
                    "cfg.json: ports[0].servers[0].foo: unknown key, ignored",
                ]
            ),
        )
        # And they change nothing else.
        self.assertEqual(
            without_where(config), without_where(parse_config(one_port(servers=[tcp(), tcp(port=10002)])))
        )

    def test_unknown_ssl_key_warns(self) -> None:
        cert, key = self.write("cert"), self.write("key")
        config = parse_config(
            one_port(servers=[tcp(protocol="ssl", ssl={"certfile": cert, "keyfile": key, "pem": 1})]),
            source="cfg.json",
        )
        self.assertEqual(config.warnings, ("cfg.json: ports[0].servers[0].ssl.pem: unknown key, ignored",))

    def test_warnings_in_legacy_array(self) -> None:
        config = parse_config([{"serial": {"port": "/dev/x"}, "servers": [tcp(bar=None)]}], source="c")
        self.assertEqual(config.warnings, ("c: [0].servers[0].bar: unknown key, ignored",))

    def test_unknown_serial_setting_is_an_error(self) -> None:
        message = self.error(one_port(serial_cfg={"port": "/dev/x", "speed": 9600}))
        self.assertEqual(
            message,
            "cfg.json: ports[0].serial.speed: unknown serial setting (known: " + ", ".join(SERIAL_KEYS) + ")",
        )

    def test_error_naming_a_key_with_a_newline_is_one_line(self) -> None:
        # JSON keys may hold any character; the message must stay one line.
        message = self.error(one_port(serial_cfg={"port": "/dev/x", "bad\nkey": 1}))
        self.assertTrue(
            message.startswith('cfg.json: ports[0].serial["bad\\nkey"]: unknown serial setting'), message
        )

    def test_warning_naming_a_key_with_a_newline_is_one_line(self) -> None:
        config = parse_config(one_port(servers=[tcp(**{"x\ny": 1})]), source="cfg.json")
        self.assertEqual(config.warnings, ('cfg.json: ports[0].servers[0]["x\\ny"]: unknown key, ignored',))


class SerialTests(ConfigTestCase):
    def test_baudrate_is_optional(self) -> None:
        self.assertEqual(self.settings({"port": "/dev/ttyUSB0"}), {"port": "/dev/ttyUSB0"})

    def test_settings_are_kept(self) -> None:
        settings = self.settings(
            {
                "port": "loop://",
                "baudrate": 115200,
                "timeout": 0.5,
                "xonxoff": True,
                "rtscts": False,
                "write_timeout": 2,
                "dsrdtr": True,
                "inter_byte_timeout": None,
                "exclusive": True,
            }
        )
        self.assertEqual(
            settings,
            {
                "port": "loop://",
                "baudrate": 115200,
                "timeout": 0.5,
                "xonxoff": True,
                "rtscts": False,
                "write_timeout": 2,
                "dsrdtr": True,
                "inter_byte_timeout": None,
                "exclusive": True,
            },
        )

    def test_parity_names(self) -> None:
        expected = {
            "NONE": serial.PARITY_NONE,
            "EVEN": serial.PARITY_EVEN,
            "ODD": serial.PARITY_ODD,
            "MARK": serial.PARITY_MARK,
            "SPACE": serial.PARITY_SPACE,
        }
        for name, value in expected.items():
            self.assertEqual(self.settings({"port": "/dev/x", "parity": name})["parity"], value, name)

    def test_stopbits_names(self) -> None:
        expected = {
            "ONE": serial.STOPBITS_ONE,
            "ONE_POINT_FIVE": serial.STOPBITS_ONE_POINT_FIVE,
            "TWO": serial.STOPBITS_TWO,
        }
        for name, value in expected.items():
            self.assertEqual(self.settings({"port": "/dev/x", "stopbits": name})["stopbits"], value, name)

    def test_bytesize_names(self) -> None:
        expected = {
            "FIVEBITS": serial.FIVEBITS,
            "SIXBITS": serial.SIXBITS,
            "SEVENBITS": serial.SEVENBITS,
            "EIGHTBITS": serial.EIGHTBITS,
        }
        for name, value in expected.items():
            self.assertEqual(self.settings({"port": "/dev/x", "bytesize": name})["bytesize"], value, name)

    def test_native_pyserial_values(self) -> None:
        settings = self.settings({"port": "/dev/x", "parity": "E", "stopbits": 2, "bytesize": 7})
        self.assertEqual(settings["parity"], serial.PARITY_EVEN)
        self.assertEqual(settings["stopbits"], serial.STOPBITS_TWO)
        self.assertEqual(settings["bytesize"], serial.SEVENBITS)
        self.assertEqual(
            self.settings({"port": "/dev/x", "stopbits": 1.5})["stopbits"], serial.STOPBITS_ONE_POINT_FIVE
        )

    def test_lowercase_parity_name_is_an_error(self) -> None:
        message = self.error(one_port(serial_cfg={"port": "/dev/x", "parity": "even"}))
        self.assertTrue(
            message.startswith(
                "cfg.json: ports[0].serial.parity: expected one of NONE, EVEN, ODD, MARK, SPACE"
            ),
            message,
        )
        self.assertTrue(message.endswith('got "even"'), message)

    def test_bad_symbolic_values(self) -> None:
        for key, value in (
            ("parity", "X"),
            ("parity", 1),
            ("parity", True),
            ("stopbits", 3),
            ("stopbits", "one"),
            ("stopbits", True),
            ("bytesize", 9),
            ("bytesize", "8"),
            ("bytesize", [8]),
        ):
            message = self.error(one_port(serial_cfg={"port": "/dev/x", key: value}))
            self.assertTrue(
                message.startswith(f"cfg.json: ports[0].serial.{key}: expected one of "), (key, message)
            )

    def test_bad_baudrate(self) -> None:
        for value in ("fast", -1, [9600], {"x": 1}):
            message = self.error(one_port(serial_cfg={"port": "/dev/x", "baudrate": value}))
            self.assertTrue(message.startswith("cfg.json: ports[0].serial.baudrate: "), message)

    def test_infinite_baudrate_is_a_config_error(self) -> None:
        # json.loads("1e999") is float("inf"): a file can hold it.
        path = self.write('{"ports": [{"serial": {"port": "/dev/x", "baudrate": 1e999}, "servers": []}]}')
        message = self.load_error(path)
        self.assertTrue(message.startswith(f"{path}: ports[0].serial.baudrate: "), message)
        self.assertTrue(message.endswith("got Infinity"), message)

    def test_bad_timeout(self) -> None:
        for key in ("timeout", "write_timeout", "inter_byte_timeout"):
            message = self.error(one_port(serial_cfg={"port": "/dev/x", key: -1}))
            self.assertTrue(message.startswith(f"cfg.json: ports[0].serial.{key}: "), message)
            message = self.error(one_port(serial_cfg={"port": "/dev/x", key: "soon"}))
            self.assertTrue(message.startswith(f"cfg.json: ports[0].serial.{key}: "), message)

    def test_bad_port(self) -> None:
        for value in ("", 5, None, ["/dev/x"]):
            message = self.error(one_port(serial_cfg={"port": value}))
            self.assertTrue(
                message.startswith("cfg.json: ports[0].serial.port: expected a device path or URL"), message
            )

    def test_serial_not_an_object(self) -> None:
        self.assertEqual(
            self.error(one_port(serial_cfg="/dev/x")),
            'cfg.json: ports[0].serial: expected an object, got "/dev/x"',
        )

    def test_neither_port_nor_match(self) -> None:
        self.assertEqual(
            self.error(one_port(serial_cfg={"baudrate": 9600})),
            'cfg.json: ports[0].serial: needs "port" or "match"',
        )

    def test_name(self) -> None:
        self.assertEqual(SerialConfig(settings={"port": "/dev/ttyS1"}).name, "/dev/ttyS1")
        self.assertEqual(
            SerialConfig(settings={}, match={"vid": "0x1234", "pid": "0x0001"}).name,
            'match:{"pid": "0x0001", "vid": "0x1234"}',
        )


class MatchTests(ConfigTestCase):
    def match(self, match: Any, **serial_extra: Any) -> SerialConfig:
        serial_cfg = {"match": match}
        serial_cfg.update(serial_extra)
        return parse_config(one_port(serial_cfg=serial_cfg)).ports[0].serial

    def test_match(self) -> None:
        result = self.match({"serial_number": "ABC*", "product": "CP2102*"}, baudrate=9600)
        self.assertEqual(result.match, {"serial_number": "ABC*", "product": "CP2102*"})
        self.assertEqual(result.settings, {"baudrate": 9600})

    def test_every_match_key_is_accepted(self) -> None:
        criteria = {key: "x*" for key in MATCH_KEYS}
        self.assertEqual(self.match(criteria).match, criteria)

    def test_match_wins_over_port(self) -> None:
        result = self.match({"vid": "0x303A"}, port="/dev/ttyUSB0")
        self.assertEqual(result.match, {"vid": "0x303A"})
        self.assertNotIn("port", result.settings)

    def test_integer_vid_pid_become_hex_strings(self) -> None:
        result = self.match({"vid": 0x303A, "pid": 1})
        self.assertEqual(result.match, {"vid": "0x303A", "pid": "0x0001"})
        self.assertEqual(self.match({"vid": 0}).match, {"vid": "0x0000"})
        self.assertEqual(self.match({"pid": 0xFFFF}).match, {"pid": "0xFFFF"})

    def test_string_vid_is_kept(self) -> None:
        self.assertEqual(self.match({"vid": "0x303a"}).match, {"vid": "0x303a"})

    def test_bad_match_values(self) -> None:
        for key, value in (
            ("vid", 0x10000),
            ("vid", -1),
            ("pid", True),
            ("serial_number", ""),
            ("product", 5),
        ):
            message = self.error(one_port(serial_cfg={"match": {key: value}}))
            self.assertEqual(
                message,
                f"cfg.json: ports[0].serial.match.{key}: expected a non-empty string pattern, "
                f"got {json.dumps(value)}",
            )

    def test_empty_match(self) -> None:
        self.assertEqual(
            self.error(one_port(serial_cfg={"match": {}})),
            "cfg.json: ports[0].serial.match: is empty: give at least one of " + ", ".join(MATCH_KEYS),
        )

    def test_unknown_match_key(self) -> None:
        self.assertEqual(
            self.error(one_port(serial_cfg={"match": {"colour": "red"}})),
            "cfg.json: ports[0].serial.match.colour: unknown match attribute (known: "
            + ", ".join(MATCH_KEYS)
            + ")",
        )

    def test_match_not_an_object(self) -> None:
        self.assertEqual(
            self.error(one_port(serial_cfg={"match": "0x303A"})),
            'cfg.json: ports[0].serial.match: expected an object, got "0x303A"',
        )


class ServerTests(ConfigTestCase):
    def test_protocol_is_case_insensitive(self) -> None:
        for written, expected in (("TCP", "tcp"), ("Telnet", "telnet"), ("tcp", "tcp"), ("TeLnEt", "telnet")):
            self.assertEqual(self.server(protocol=written).protocol, expected)

    def test_missing_protocol(self) -> None:
        server = tcp()
        del server["protocol"]
        self.assertEqual(
            self.error(one_port(servers=[server])),
            'cfg.json: ports[0].servers[0]: missing "protocol" '
            "(one of tcp, telnet, ssl, socket, websocket, tls)",
        )

    def test_unknown_protocol(self) -> None:
        self.assertEqual(
            self.error(one_port(servers=[tcp(protocol="udp")])),
            "cfg.json: ports[0].servers[0].protocol: "
            'expected one of tcp, telnet, ssl, socket, websocket, tls, got "udp"',
        )
        message = self.error(one_port(servers=[tcp(protocol=6)]))
        self.assertTrue(
            message.startswith("cfg.json: ports[0].servers[0].protocol: expected one of"), message
        )

    def test_server_not_an_object(self) -> None:
        self.assertEqual(
            self.error(one_port(servers=["tcp"])),
            'cfg.json: ports[0].servers[0]: expected an object, got "tcp"',
        )

    def test_missing_address(self) -> None:
        server = tcp()
        del server["address"]
        self.assertEqual(
            self.error(one_port(servers=[server])),
            'cfg.json: ports[0].servers[0]: missing "address" (or "endpoint")',
        )

    def test_address_not_a_string(self) -> None:
        message = self.error(one_port(servers=[tcp(address=127)]))
        self.assertEqual(
            message, "cfg.json: ports[0].servers[0].address: expected a host name or IP address, got 127"
        )

    def test_empty_address_listens_everywhere(self) -> None:
        server = self.server(address="")
        self.assertEqual(server.address, "")
        self.assertEqual(server.label, "TCP *:10001")

    def test_missing_port(self) -> None:
        server = tcp()
        del server["port"]
        self.assertEqual(
            self.error(one_port(servers=[server])), 'cfg.json: ports[0].servers[0]: missing "port"'
        )

    def test_port_range(self) -> None:
        self.assertEqual(self.server(port=1).port, 1)
        self.assertEqual(self.server(port=65535).port, 65535)
        for value in (0, 65536, -1, 1.5, True, None, "80"):
            message = self.error(one_port(servers=[tcp(port=value)]))
            self.assertEqual(
                message,
                f"cfg.json: ports[0].servers[0].port: expected an integer 1-65535, got {json.dumps(value)}",
            )

    def test_port_as_text_in_second_server(self) -> None:
        message = self.error(one_port(servers=[tcp(), tcp(port="abc")]), source="cfg.json")
        self.assertEqual(
            message, 'cfg.json: ports[0].servers[1].port: expected an integer 1-65535, got "abc"'
        )

    def test_send_timeout(self) -> None:
        self.assertEqual(self.server().send_timeout, 5.0)
        self.assertEqual(self.server(send_timeout=None).send_timeout, 5.0)
        self.assertEqual(self.server(send_timeout=0).send_timeout, 0.0)
        timeout = self.server(send_timeout=2).send_timeout
        self.assertEqual(timeout, 2.0)
        self.assertIsInstance(timeout, float)
        self.assertEqual(self.server(send_timeout=0.25).send_timeout, 0.25)

    def test_bad_send_timeout(self) -> None:
        for value in (-1, -0.5, "5", True, [1]):
            self.assertEqual(
                self.error(one_port(servers=[tcp(send_timeout=value)])),
                "cfg.json: ports[0].servers[0].send_timeout: expected a number of seconds >= 0, "
                f"got {json.dumps(value)}",
            )

    def test_infinite_send_timeout_is_refused(self) -> None:
        path = self.write(
            json.dumps(one_port(servers=[tcp()])).replace(
                '"port": 10001', '"port": 10001, "send_timeout": 1e999'
            )
        )
        self.assertIn("servers[0].send_timeout: expected a number of seconds >= 0", self.load_error(path))

    def test_buffer_limit(self) -> None:
        self.assertIsNone(self.server().buffer_limit)
        self.assertIsNone(self.server(buffer_limit=None).buffer_limit)
        self.assertIsNone(self.server(buffer_limit=0).buffer_limit)
        self.assertEqual(self.server(buffer_limit=4096).buffer_limit, 4096)

    def test_bad_buffer_limit(self) -> None:
        for value in (-1, 1.5, "4096", True):
            self.assertEqual(
                self.error(one_port(servers=[tcp(buffer_limit=value)])),
                "cfg.json: ports[0].servers[0].buffer_limit: expected a number of bytes >= 0 or null, "
                f"got {json.dumps(value)}",
            )

    def test_handshake_timeout(self) -> None:
        tls = {"protocol": "ssl", "ssl": {"certfile": self.write("c"), "keyfile": self.write("k")}}
        self.assertEqual(self.server(**tls).handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT)
        self.assertEqual(self.server(handshake_timeout=3, **tls).handshake_timeout, 3.0)
        for value in (0, -1, "3", True):
            message = self.error(one_port(servers=[tcp(handshake_timeout=value, **tls)]))
            self.assertTrue(
                message.startswith("cfg.json: ports[0].servers[0].handshake_timeout: expected a number"),
                message,
            )

    def test_endpoint(self) -> None:
        server = ServerConfig(protocol="tcp", endpoint="tcp:10005:interface=127.0.0.1")
        self.assertEqual(server.endpoint, "tcp:10005:interface=127.0.0.1")
        self.assertEqual(server.label, "TCP tcp:10005:interface=127.0.0.1")
        # An endpoint needs neither address nor port.
        config = parse_config(one_port(servers=[{"protocol": "tcp", "endpoint": "tcp:10005"}]))
        self.assertEqual(config.ports[0].servers[0].endpoint, "tcp:10005")
        for value in ("", "  ", 5):
            message = self.error(one_port(servers=[{"protocol": "tcp", "endpoint": value}]))
            self.assertTrue(
                message.startswith("cfg.json: ports[0].servers[0].endpoint: expected an endpoint string"),
                message,
            )

    def test_label(self) -> None:
        self.assertEqual(self.server().label, "TCP 127.0.0.1:10001")
        self.assertEqual(self.server(protocol="telnet").label, "TELNET 127.0.0.1:10001")

    def test_ipv6_label_has_brackets(self) -> None:
        # As clients are named ([::1]:43922): the port is not part of the address.
        self.assertEqual(self.server(address="::1").label, "TCP [::1]:10001")
        self.assertEqual(self.server(address="").label, "TCP *:10001")


class SocketServerTests(ConfigTestCase):
    def socket_server(self, **extra: Any) -> ServerConfig:
        server: dict[str, Any] = {"protocol": "socket", "address": "/tmp/ser2tcp.sock"}
        server.update(extra)
        return parse_config(one_port(servers=[server])).ports[0].servers[0]

    def test_socket(self) -> None:
        server = self.socket_server()
        self.assertEqual(server.protocol, "socket")
        self.assertEqual(server.address, "/tmp/ser2tcp.sock")
        self.assertIsNone(server.port)
        self.assertIsNone(server.mode)
        self.assertEqual(server.label, "SOCKET /tmp/ser2tcp.sock")

    def test_mode(self) -> None:
        self.assertEqual(self.socket_server(mode="0660").mode, 0o660)
        self.assertEqual(self.socket_server(mode="600").mode, 0o600)
        for value in ("0999", "rw", 660, "-1", "17777"):
            message = self.error(
                one_port(servers=[{"protocol": "socket", "address": "/tmp/s", "mode": value}])
            )
            self.assertEqual(
                message,
                'cfg.json: ports[0].servers[0].mode: expected an octal string such as "0660", '
                f"got {json.dumps(value)}",
            )

    def test_missing_path(self) -> None:
        self.assertEqual(
            self.error(one_port(servers=[{"protocol": "socket"}])),
            'cfg.json: ports[0].servers[0]: missing "address" (the Unix socket path)',
        )

    def test_bad_path(self) -> None:
        for value in ("", 5):
            self.assertEqual(
                self.error(one_port(servers=[{"protocol": "socket", "address": value}])),
                "cfg.json: ports[0].servers[0].address: expected a socket file path, "
                f"got {json.dumps(value)}",
            )

    def test_path_too_long(self) -> None:
        self.socket_server(address="/" + "s" * 106)
        self.assertEqual(
            self.error(one_port(servers=[{"protocol": "socket", "address": "/" + "s" * 107}])),
            "cfg.json: ports[0].servers[0].address: socket path longer than 107 bytes",
        )
        # Bytes, not characters.
        self.error(one_port(servers=[{"protocol": "socket", "address": "/" + "\u00e9" * 60}]))

    def test_path_with_lone_surrogate_is_a_config_error(self) -> None:
        # json.loads('"\\ud800"') gives a lone surrogate, which cannot be encoded.
        path = self.write(
            '{"ports": [{"serial": {"port": "/dev/x"}, '
            '"servers": [{"protocol": "socket", "address": "/tmp/\\ud800"}]}]}'
        )
        message = self.load_error(path)
        self.assertTrue(message.startswith(f"{path}: ports[0].servers[0].address: "), message)


class SslTests(ConfigTestCase):
    def test_ssl(self) -> None:
        cert, key, ca = self.write("cert"), self.write("key"), self.write("ca")
        server = self.server(protocol="SSL", ssl={"certfile": cert, "keyfile": key})
        self.assertEqual(server.protocol, "ssl")
        self.assertEqual(server.ssl, SslConfig(certfile=cert, keyfile=key, ca_certs=None))
        server = self.server(protocol="ssl", ssl={"certfile": cert, "keyfile": key, "ca_certs": ca})
        self.assertEqual(server.ssl, SslConfig(certfile=cert, keyfile=key, ca_certs=ca))

    def test_plain_tcp_has_no_ssl(self) -> None:
        self.assertIsNone(self.server().ssl)

    def test_ssl_section_missing(self) -> None:
        self.assertEqual(
            self.error(one_port(servers=[tcp(protocol="ssl")])),
            'cfg.json: ports[0].servers[0].ssl: protocol "ssl" requires '
            '"ssl": {"certfile": ..., "keyfile": ...}',
        )

    def test_ssl_without_keyfile(self) -> None:
        cert = self.write("cert")
        self.assertEqual(
            self.error(one_port(servers=[tcp(protocol="ssl", ssl={"certfile": cert})])),
            "cfg.json: ports[0].servers[0].ssl.keyfile: SSL requires certfile and keyfile",
        )

    def test_ssl_without_certfile(self) -> None:
        key = self.write("key")
        self.assertEqual(
            self.error(one_port(servers=[tcp(protocol="ssl", ssl={"keyfile": key})])),
            "cfg.json: ports[0].servers[0].ssl.certfile: SSL requires certfile and keyfile",
        )

    def test_ssl_path_not_a_string(self) -> None:
        key = self.write("key")
        self.assertEqual(
            self.error(one_port(servers=[tcp(protocol="ssl", ssl={"certfile": 5, "keyfile": key})])),
            "cfg.json: ports[0].servers[0].ssl.certfile: expected a file path, got 5",
        )

    def test_unreadable_certfile(self) -> None:
        key = self.write("key")
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(
            self.error(one_port(servers=[tcp(protocol="ssl", ssl={"certfile": missing, "keyfile": key})])),
            f"cfg.json: ports[0].servers[0].ssl.certfile: cannot read {missing}: No such file or directory",
        )

    def test_unreadable_ca_certs(self) -> None:
        cert, key = self.write("cert"), self.write("key")
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        message = self.error(
            one_port(
                servers=[tcp(protocol="ssl", ssl={"certfile": cert, "keyfile": key, "ca_certs": directory})]
            )
        )
        self.assertTrue(
            message.startswith(f"cfg.json: ports[0].servers[0].ssl.ca_certs: cannot read {directory}: "),
            message,
        )

    def test_certfile_with_nul_byte_is_a_config_error(self) -> None:
        # "\u0000" is valid JSON; open() refuses it with ValueError, not OSError.
        key = self.write("key")
        path = self.write(
            json.dumps(
                one_port(servers=[tcp(protocol="ssl", ssl={"certfile": "cert\u0000.pem", "keyfile": key})])
            )
        )
        message = self.load_error(path)
        self.assertTrue(message.startswith(f"{path}: ports[0].servers[0].ssl.certfile: "), message)


class LoadConfigTests(ConfigTestCase):
    def test_load(self) -> None:
        path = self.write(json.dumps(one_port()))
        config = load_config(path)
        self.assertEqual(config.source, path)
        self.assertEqual(without_where(config), without_where(parse_config(one_port())))

    def test_load_legacy_array(self) -> None:
        path = self.write(json.dumps(one_port()["ports"]))
        self.assertEqual(without_where(load_config(path)), without_where(parse_config(one_port())))

    def test_errors_name_the_file(self) -> None:
        path = self.write(json.dumps(one_port(servers=[tcp(), tcp(port="abc")])))
        self.assertEqual(
            self.load_error(path),
            f'{path}: ports[0].servers[1].port: expected an integer 1-65535, got "abc"',
        )

    def test_warnings_name_the_file(self) -> None:
        path = self.write(json.dumps(one_port(servers=[tcp(foo=1)])))
        self.assertEqual(
            load_config(path).warnings, (f"{path}: ports[0].servers[0].foo: unknown key, ignored",)
        )

    def test_missing_file(self) -> None:
        path = self.mktemp()
        self.assertEqual(self.load_error(path), f"{path}: cannot read config: No such file or directory")

    def test_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        self.assertTrue(self.load_error(path).startswith(f"{path}: cannot read config: "))

    def test_invalid_json(self) -> None:
        path = self.write('{\n  "ports": [\n    {"serial": }\n  ]\n}\n')
        message = self.load_error(path)
        self.assertTrue(message.startswith(f"{path}: invalid JSON at line 3 column 16: "), message)

    def test_empty_file(self) -> None:
        path = self.write("")
        self.assertTrue(self.load_error(path).startswith(f"{path}: invalid JSON at line 1 column 1: "))

    def test_not_utf8(self) -> None:
        path = self.write(b'{"ports": "\xff"}')
        self.assertTrue(self.load_error(path).startswith(f"{path}: config is not UTF-8 text: "))

    def test_nested_too_deeply(self) -> None:
        path = self.write("[" * 100000 + "]" * 100000)
        self.assertEqual(self.load_error(path), f"{path}: invalid JSON: nested too deeply")

    def test_root_neither_object_nor_array(self) -> None:
        path = self.write("42")
        self.assertEqual(
            self.load_error(path), f'{path}: expected a JSON object with "ports" or a list of ports, got 42'
        )

    def test_no_ports(self) -> None:
        path = self.write('{"ports": []}')
        self.assertEqual(self.load_error(path), f"{path}: ports: no ports configured")


class WrongJsonTypeTests(ConfigTestCase):
    """Every key refuses the JSON types that would mean something else.

    JSON ``true`` is a Python ``int`` and any value is truthy: without these
    checks ``"xonxoff": "false"`` switches flow control on."""

    #: key -> (a valid value, the wrong values)
    SERIAL = {
        "baudrate": (115200, [True, False, 9600.5, "9600", "fast", None, 0, -9600, 2**31, 2**70, [9600]]),
        "bytesize": (8, [True, 8.0, "8", None, 9]),
        "parity": ("N", [True, 0, None, "even"]),
        "stopbits": (1, [True, "1", None, 3]),
        "xonxoff": (False, ["false", "no", 0, 1, None, "true", [], {}]),
        "rtscts": (True, ["false", 0, 1, None]),
        "dsrdtr": (False, ["false", 0, 1, None]),
        "exclusive": (True, ["no", 0, 1, None]),
        "timeout": (0.5, [True, "1", -1, [1]]),
        "write_timeout": (None, [False, "1", -0.5]),
        "inter_byte_timeout": (1, [True, "1", {}]),
        "dtr": (False, ["false", 0, 1, None]),
        "rts": (True, ["false", 0, 1, None]),
        "port": ("/dev/x", [True, 5, None, ""]),
    }
    #: server key -> (a server with that key valid, the wrong values)
    SERVER = {
        "port": (tcp(), [True, 10001.0, "10001", None, 0, 70000]),
        "address": (tcp(), [True, 127, None, ["127.0.0.1"]]),
        "protocol": (tcp(), [True, 1, None, ["tcp"]]),
        "send_timeout": (tcp(send_timeout=1), [True, "5", -1]),
        "buffer_limit": (tcp(buffer_limit=4096), [True, 1.5, "4096", -1]),
        "rfc2217": ({"protocol": "telnet", "address": "", "port": 1, "rfc2217": True}, [0, 1, "yes", []]),
        "mode": ({"protocol": "socket", "address": "/tmp/s"}, [True, 660, 0o660, "rw", "0999"]),
        "endpoint": ({"protocol": "tcp", "endpoint": "tcp:7000"}, [True, 7000, ""]),
    }

    def test_valid_values_pass(self) -> None:
        settings = {key: valid for key, (valid, _) in self.SERIAL.items()}
        parse_config(one_port(serial_cfg=settings))

    def test_serial_keys(self) -> None:
        for key, (_, wrong) in self.SERIAL.items():
            for value in wrong:
                message = self.error(one_port(serial_cfg={"port": "/dev/x", key: value}))
                self.assertTrue(
                    message.startswith(f"cfg.json: ports[0].serial.{key}: expected "), (key, value, message)
                )
                self.assertIn(f"got {json.dumps(value)}", message)

    def test_server_keys(self) -> None:
        for key, (server, wrong) in self.SERVER.items():
            for value in wrong:
                message = self.error(one_port(servers=[{**server, key: value}]))
                self.assertTrue(
                    message.startswith(f"cfg.json: ports[0].servers[0].{key}: "), (key, value, message)
                )

    def test_match_keys(self) -> None:
        for value in (True, 1.5, -1, 0x10000, None, [1]):
            message = self.error(one_port(serial_cfg={"match": {"vid": value}}))
            self.assertTrue(message.startswith("cfg.json: ports[0].serial.match.vid: expected "), message)

    def test_large_baudrate_is_refused_before_any_client(self) -> None:
        # termios takes a C int: larger values used to fail every open.
        self.assertEqual(self.settings({"port": "/dev/x", "baudrate": 2**31 - 1})["baudrate"], 2**31 - 1)
        self.assertEqual(
            self.error(one_port(serial_cfg={"port": "/dev/x", "baudrate": 2**31})),
            "cfg.json: ports[0].serial.baudrate: expected a whole number of bits per second, "
            "1 to 2147483647, got 2147483648",
        )

    def test_messages_say_what_was_expected(self) -> None:
        # Not Python's "invalid literal for int() with base 10: 'fast'".
        message = self.error(one_port(serial_cfg={"port": "/dev/x", "baudrate": "fast"}))
        self.assertNotIn("int()", message)
        self.assertIn("bits per second", message)
        message = self.error(one_port(serial_cfg={"port": "/dev/x", "inter_byte_timeout": "1"}))
        self.assertNotIn("not supported between", message)


class ForeignKeyTests(ConfigTestCase):
    """A key of another protocol is an error, not silently dropped."""

    def tls_files(self) -> dict[str, str]:
        return {"certfile": self.write("cert"), "keyfile": self.write("key")}

    def test_ssl_block_on_tcp_server(self) -> None:
        for protocol in ("tcp", "telnet"):
            self.assertEqual(
                self.error(one_port(servers=[tcp(protocol=protocol, ssl=self.tls_files())])),
                f"cfg.json: ports[0].servers[0].ssl: only for ssl servers, not {protocol}",
            )

    def test_tls_only_and_socket_only_keys(self) -> None:
        self.assertEqual(
            self.error(one_port(servers=[tcp(handshake_timeout=5)])),
            "cfg.json: ports[0].servers[0].handshake_timeout: only for ssl servers, not tcp",
        )
        self.assertEqual(
            self.error(one_port(servers=[tcp(mode="0600")])),
            "cfg.json: ports[0].servers[0].mode: only for socket servers, not tcp",
        )

    def test_port_on_socket_server(self) -> None:
        server = {"protocol": "socket", "address": "/tmp/s.sock", "port": 7000}
        self.assertEqual(
            self.error(one_port(servers=[server])),
            "cfg.json: ports[0].servers[0].port: only for tcp and telnet and ssl servers, not socket",
        )

    def test_address_or_port_beside_endpoint(self) -> None:
        for key, value in (("address", "127.0.0.1"), ("port", 7000)):
            server = {"protocol": "tcp", "endpoint": "tcp:7000", key: value}
            self.assertEqual(
                self.error(one_port(servers=[server])),
                f'cfg.json: ports[0].servers[0].{key}: not used with "endpoint" '
                "(the endpoint string says where to listen)",
            )
        server = {"protocol": "socket", "endpoint": "unix:/tmp/s", "mode": "0600"}
        self.assertIn(".mode: not used with", self.error(one_port(servers=[server])))

    def test_null_is_absent(self) -> None:
        # null is how JSON says "not set": no protocol is implied.
        server = self.server(ssl=None, mode=None, handshake_timeout=None, rfc2217=False)
        self.assertIsNone(server.ssl)
        self.assertIsNone(server.rfc2217)


class ConfigFileTests(ConfigTestCase):
    def test_empty_path(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config("")
        self.assertEqual(str(caught.exception), "the config file path is empty (-c '')")

    def test_not_a_regular_file(self) -> None:
        # /dev/zero never ends: it must not be read at all.
        self.assertEqual(self.load_error("/dev/zero"), "/dev/zero: cannot read config: not a regular file")
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        fifo = f"/proc/self/fd/{read}"
        self.assertEqual(self.load_error(fifo), f"{fifo}: cannot read config: not a regular file")

    def test_size_limit(self) -> None:
        ok = json.dumps(one_port())
        path = self.write(ok + " " * (MAX_CONFIG_BYTES - len(ok)))
        self.assertEqual(len(load_config(path).ports), 1)
        path = self.write(ok + " " * (MAX_CONFIG_BYTES - len(ok) + 1))
        self.assertEqual(self.load_error(path), f"{path}: config larger than 1 MiB; not reading it")


class DuplicateListenerTests(ConfigTestCase):
    def test_socket_path_twice(self) -> None:
        directory = tempfile.mkdtemp(prefix="s2t")  # socket paths are short
        self.addCleanup(shutil.rmtree, directory)
        link = os.path.join(directory, "link")
        os.symlink(directory, link)
        first = {"protocol": "socket", "address": os.path.join(directory, "s.sock")}
        second = {"protocol": "socket", "address": os.path.join(link, "s.sock")}
        config = {"ports": [one_port()["ports"][0], one_port(servers=[first, second])["ports"][0]]}
        self.assertEqual(
            self.error(config),
            f"cfg.json: ports[1].servers[1].address: {second['address']} "
            "is already used by ports[1].servers[0]",
        )

    def test_tcp_address_twice(self) -> None:
        config = {"ports": [one_port()["ports"][0], one_port(servers=[tcp(protocol="telnet")])["ports"][0]]}
        self.assertEqual(
            self.error(config),
            "cfg.json: ports[1].servers[0].port: 127.0.0.1:10001 is already used by ports[0].servers[0]",
        )

    def test_same_port_other_address_is_fine(self) -> None:
        parse_config(one_port(servers=[tcp(), tcp(address="127.0.0.2")]))


class AccessConfigTests(ConfigTestCase):
    def test_defaults(self) -> None:
        server = self.server()
        self.assertFalse(server.ipfilter.active)
        self.assertEqual((server.max_connections, server.on_full, server.access), (0, "refuse", "rw"))
        self.assertEqual((server.keepalive, server.half_close), (60.0, 2.0))
        self.assertEqual(parse_config(one_port()).ports[0].max_connections, 0)

    def test_values(self) -> None:
        server = self.server(
            allow=["10.0.0.0/8", "::1"],
            deny=["10.9.0.0/16"],
            max_connections=1,
            on_full="kick_oldest",
            access="ro",
            keepalive=None,
            half_close=0,
        )
        self.assertIsNone(server.ipfilter.refusal("10.1.1.1"))
        self.assertEqual(server.ipfilter.refusal("10.9.1.1"), "deny 10.9.0.0/16")
        self.assertEqual((server.max_connections, server.on_full, server.access), (1, "kick_oldest", "ro"))
        self.assertEqual((server.keepalive, server.half_close), (None, 0.0))
        self.assertIsNone(self.server(keepalive=0).keepalive)
        self.assertEqual(parse_config(one_port(max_connections=3)).ports[0].max_connections, 3)

    def test_bad_values(self) -> None:
        for key, value, problem in (
            ("allow", "10.0.0.0/8", "expected a list of IP addresses or networks"),
            ("deny", [5], "[0]: expected an IP address or network, got 5"),
            ("allow", ["10.0.0.300/8"], '[0]: not an IP address or network: "10.0.0.300/8"'),
            ("deny", ["::1", "foo"], '[1]: not an IP address or network: "foo"'),
            ("max_connections", -1, "expected a whole number >= 0"),
            ("max_connections", True, "expected a whole number >= 0"),
            ("on_full", "kick", 'expected one of refuse, kick_oldest, got "kick"'),
            ("access", "none", 'expected one of rw, ro, wo, got "none"'),
            ("access", True, "expected one of rw, ro, wo, got true"),
            ("keepalive", "60", "expected a number of seconds >= 0 or null"),
            ("keepalive", True, "expected a number of seconds >= 0 or null"),
            ("half_close", None, "expected a number of seconds >= 0, got null"),
            ("half_close", -1, "expected a number of seconds >= 0"),
        ):
            message = self.error(one_port(servers=[tcp(**{key: value})]))
            self.assertTrue(message.startswith(f"cfg.json: ports[0].servers[0].{key}"), message)
            self.assertIn(problem, message)
        message = self.error(one_port(max_connections="2"))
        self.assertTrue(message.startswith("cfg.json: ports[0].max_connections: expected a whole number"))

    def test_ip_rules_mean_nothing_on_unix_sockets(self) -> None:
        for key in ("allow", "deny", "keepalive"):
            server = {
                "protocol": "socket",
                "address": "/tmp/s.sock",
                key: ["::1"] if key != "keepalive" else 5,
            }
            self.assertEqual(
                self.error(one_port(servers=[server])),
                f"cfg.json: ports[0].servers[0].{key}: only for tcp and telnet and ssl servers, not socket",
            )

    def test_read_only_rfc2217_changes_nothing(self) -> None:
        server = self.server(protocol="telnet", access="ro", rfc2217={"settings": "apply"})
        self.assertEqual(server.rfc2217, "ignore")


class TlsSpellingTests(ConfigTestCase):
    def files(self, **extra: Any) -> dict[str, Any]:
        return {"certfile": self.write("c"), "keyfile": self.write("k"), **extra}

    def test_tls_is_ssl(self) -> None:
        files = self.files()
        for spelling in ({"protocol": "tls", "tls": files}, {"protocol": "TLS", "ssl": files}):
            server = self.server(**spelling)
            self.assertEqual(server.protocol, "ssl")
            self.assertEqual(server.ssl, SslConfig(**files))

    def test_both_blocks(self) -> None:
        files = self.files()
        self.assertEqual(
            self.error(one_port(servers=[tcp(protocol="tls", tls=files, ssl=files)])),
            'cfg.json: ports[0].servers[0].tls: give "ssl" or "tls", not both',
        )

    def test_tls_block_on_plain_server(self) -> None:
        self.assertEqual(
            self.error(one_port(servers=[tcp(tls=self.files())])),
            "cfg.json: ports[0].servers[0].tls: only for ssl servers, not tcp",
        )

    def test_allow_client_cn(self) -> None:
        files = self.files(ca_certs=self.write("ca"), allow_client_cn=["alice", "Bob"])
        self.assertEqual(self.server(protocol="tls", tls=files).ssl.allow_client_cn, ("alice", "Bob"))

    def test_allow_client_cn_needs_ca_certs(self) -> None:
        self.assertEqual(
            self.error(one_port(servers=[tcp(protocol="tls", tls=self.files(allow_client_cn=["alice"]))])),
            'cfg.json: ports[0].servers[0].tls.allow_client_cn: needs "ca_certs": '
            "without client certificates there is no name to check",
        )

    def test_bad_allow_client_cn(self) -> None:
        for value in ("alice", [""], [5], {}):
            files = self.files(ca_certs=self.write("ca"), allow_client_cn=value)
            message = self.error(one_port(servers=[tcp(protocol="ssl", ssl=files)]))
            self.assertIn("ssl.allow_client_cn: expected a list of certificate Common Names", message)


class ConsoleConfigTests(ConfigTestCase):
    def port(self, **extra: Any) -> PortConfig:
        return parse_config(one_port(**extra)).ports[0]

    def test_defaults_keep_the_pipe(self) -> None:
        port = self.port()
        self.assertEqual((port.open, port.on_loss, port.reopen_interval), ("on_demand", "close", 1.0))
        self.assertEqual((port.log, port.scrollback, port.servers[0].replay), (None, 0, False))

    def test_values(self) -> None:
        log_path = os.path.join(tempfile.mkdtemp(), "lab.log")
        port = self.port(
            name="lab-1.a_b",
            open="always",
            on_loss="hold",
            reopen_interval=0.5,
            scrollback=65536,
            log={"path": log_path, "timestamps": False, "max_bytes": 1000, "backups": 2},
            servers=[tcp(replay=True)],
        )
        self.assertEqual(
            (port.name, port.open, port.on_loss, port.reopen_interval), ("lab-1.a_b", "always", "hold", 0.5)
        )
        self.assertEqual(port.log, LogConfig(path=log_path, timestamps=False, max_bytes=1000, backups=2))
        self.assertEqual((port.scrollback, port.servers[0].replay), (65536, True))

    def test_derived_names(self) -> None:
        ports = [
            {"serial": {"port": "/dev/ttyUSB0"}, "servers": []},
            {"serial": {"port": "/dev/serial/by-id/usb-FTDI_A1-if00"}, "servers": []},
            {"serial": {"port": "socket://10.0.0.5:7000"}, "servers": []},
            {"serial": {"match": {"vid": "0x303A", "serial_number": "AB*"}}, "servers": []},
            {"serial": {"port": "/dev/ttyUSB0x"}, "name": "ttyUSB0", "servers": []},
            {"serial": {"port": "/tmp/ttyUSB0"}, "servers": []},
        ]
        names = [p.name for p in parse_config({"ports": ports}).ports]
        self.assertEqual(
            names,
            [
                "ttyUSB0-2",
                "serial-by-id-usb-FTDI_A1-if00",
                "socket-10.0.0.5-7000",
                "usb-0x303A-AB",
                "ttyUSB0",
                "tmp-ttyUSB0",
            ],
        )

    def test_names_are_unique(self) -> None:
        ports = [{"serial": {"port": f"/dev/ttyS{i}"}, "name": "lab", "servers": []} for i in range(2)]
        self.assertEqual(
            self.error({"ports": ports}), "cfg.json: ports[1].name: 'lab' is already the name of ports[0]"
        )

    def test_bad_values(self) -> None:
        for key, value, problem in (
            ("name", "lab 1", "expected 1-64 characters of A-Z a-z 0-9 . _ -"),
            ("name", "x" * 65, "expected 1-64 characters"),
            ("name", 5, "expected 1-64 characters"),
            ("open", "yes", "expected one of on_demand, always"),
            ("on_loss", "keep", "expected one of close, hold"),
            ("reopen_interval", 0, "expected a number of seconds > 0"),
            ("reopen_interval", True, "expected a number of seconds > 0"),
            ("scrollback", -1, "expected a number of bytes"),
            ("scrollback", 1.5, "expected a number of bytes"),
            ("log", "/tmp/x.log", 'expected {"path": ...}'),
            (
                "log",
                {"path": "/nonexistent-dir/x.log"},
                ".path: the directory /nonexistent-dir does not exist",
            ),
            ("log", {"path": "/tmp/x.log", "timestamps": "no"}, ".timestamps: expected true or false"),
            ("log", {"path": "/tmp/x.log", "max_bytes": -1}, ".max_bytes: expected a whole number >= 0"),
            ("log", {"path": "/tmp/x.log", "backups": 1.5}, ".backups: expected a whole number >= 1"),
            ("log", {"path": "/tmp/x.log", "backups": 0}, ".backups: expected a whole number >= 1"),
        ):
            message = self.error(one_port(**{key: value}))
            self.assertTrue(message.startswith(f"cfg.json: ports[0].{key}"), message)
            self.assertIn(problem, message)
        message = self.error(one_port(servers=[tcp(replay="yes")]))
        self.assertIn("ports[0].servers[0].replay: expected true or false", message)


class DuplicateDeviceTests(ConfigTestCase):
    def ports(self, *paths: str) -> dict[str, Any]:
        return {"ports": [{"serial": {"port": p}, "servers": []} for p in paths]}

    def test_same_path_twice(self) -> None:
        self.assertEqual(
            self.error(self.ports("/dev/ttyUSB0", "/dev/ttyS1", "/dev/ttyUSB0")),
            "cfg.json: ports[2].serial.port: /dev/ttyUSB0 is the device of ports[0].serial.port too",
        )

    def test_same_device_through_a_symlink(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        link = os.path.join(directory, "ttyBOARD")
        os.symlink("/dev/null", link)
        message = self.error(self.ports("/dev/null", link))
        self.assertEqual(
            message, f"cfg.json: ports[1].serial.port: {link} is the device of ports[0].serial.port too"
        )

    def test_urls_may_repeat(self) -> None:
        self.assertEqual(len(parse_config(self.ports("loop://", "loop://")).ports), 2)


class WebsocketConfigTests(ConfigTestCase):
    def config(self, *servers: Any, http: Any = None) -> dict[str, Any]:
        data = one_port(servers=list(servers))
        data["http"] = {"port": 8080} if http is None else http
        return data

    def test_websocket_server(self) -> None:
        server = parse_config(
            self.config({"protocol": "websocket", "endpoint": "dev-1", "settings": "reject"})
        )
        ws = server.ports[0].servers[0]
        self.assertEqual(
            (ws.protocol, ws.endpoint, ws.settings, ws.label),
            ("websocket", "dev-1", "reject", "WEBSOCKET /ws/dev-1"),
        )
        self.assertEqual(
            parse_config(self.config({"protocol": "websocket", "endpoint": "d"}))
            .ports[0]
            .servers[0]
            .settings,
            "apply",
        )

    def test_needs_an_http_section(self) -> None:
        data = one_port(servers=[{"protocol": "websocket", "endpoint": "dev"}])
        self.assertEqual(
            self.error(data),
            "cfg.json: ports[0].servers[0].protocol: "
            'a websocket server is served by the HTTP servers: add an "http" section',
        )

    def test_bad_values(self) -> None:
        for server, problem in (
            ({"protocol": "websocket"}, ".endpoint: expected a URL path segment"),
            ({"protocol": "websocket", "endpoint": "a/b"}, ".endpoint: expected a URL path segment"),
            (
                {"protocol": "websocket", "endpoint": "d", "settings": "yes"},
                ".settings: expected one of apply",
            ),
            ({"protocol": "websocket", "endpoint": "d", "address": "0.0.0.0"}, ".address: only for"),
            ({"protocol": "websocket", "endpoint": "d", "port": 80}, ".port: only for"),
            ({"protocol": "websocket", "endpoint": "d", "allow": ["::1"]}, ".allow: only for"),
            (tcp(settings="apply"), ".settings: only for websocket servers, not tcp"),
        ):
            message = self.error(self.config(server))
            self.assertTrue(message.startswith("cfg.json: ports[0].servers[0]"), message)
            self.assertIn(problem, message)

    def test_endpoint_unique(self) -> None:
        ws = {"protocol": "websocket", "endpoint": "dev"}
        self.assertEqual(
            self.error(self.config(ws, ws)),
            "cfg.json: ports[0].servers[1].endpoint: /ws/dev is already used by ports[0].servers[0]",
        )


class HttpConfigTests(ConfigTestCase):
    HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA"

    def test_http_users_tokens(self) -> None:
        data = one_port()
        data["http"] = [
            {"address": "127.0.0.1", "port": 9100, "metrics_public": True, "allow": ["10.0.0.0/8"]}
        ]
        data["users"] = [{"login": "alice", "password": self.HASH}]
        data["tokens"] = [{"token": "x" * 16, "name": "prometheus"}]
        config = parse_config(data)
        (http,) = config.http
        self.assertEqual(
            (http.listen.address, http.listen.port, http.metrics_public), ("127.0.0.1", 9100, True)
        )
        self.assertEqual(http.ipfilter.refusal("11.0.0.1"), "not in allow")
        self.assertEqual((config.users[0].login, config.tokens[0].name), ("alice", "prometheus"))
        data["http"] = {}  # one object, defaults
        (http,) = parse_config(data).http
        self.assertEqual(
            (http.listen.address, http.listen.port, http.listen.protocol), ("0.0.0.0", 8080, "tcp")
        )

    def test_plain_text_password_is_refused(self) -> None:
        data = one_port()
        data["users"] = [{"login": "alice", "password": "hunter2"}]
        message = self.error(data)
        self.assertTrue(message.startswith("cfg.json: users[0].password: not a password hash"), message)

    def test_weak_hash_warns(self) -> None:
        data = one_port()
        data["users"] = [{"login": "alice", "password": "sha256:00:" + "0" * 64}]
        (warning,) = [w for w in parse_config(data, "cfg.json").warnings if "users" in w]
        self.assertIn("cfg.json: users[0].password: a sha256 hash is fast to brute-force", warning)

    def test_bad_values(self) -> None:
        for key, value, problem in (
            ("http", 5, "http: expected a list of HTTP servers"),
            ("http", [{"port": 0}], "http[0].port: expected an integer 1-65535"),
            ("http", [{"metrics_public": 1}], "http[0].metrics_public: expected true or false"),
            ("http", [{"deny": ["x"]}], 'http[0].deny[0]: not an IP address or network: "x"'),
            (
                "users",
                [{"login": "a:b", "password": self.HASH}],
                "users[0].login: expected a name without ':'",
            ),
            ("tokens", [{"token": "short"}], "tokens[0].token: expected a secret of at least 16"),
        ):
            data = one_port()
            data[key] = value
            self.assertIn(problem, self.error(data))


# --- property: parse_config never fails with anything but a one-line ConfigError

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # json.loads gives inf and nan too ("1e999", "NaN")
    st.text(max_size=10),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
_small = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=2),
    st.dictionaries(st.text(max_size=4), _scalars, max_size=2),
)


def _weighted(options: list[st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Draw from one of ``options``, each equally likely (``one_of`` would
    merge repeated entries, so repeat an entry to make it more likely)."""
    return st.sampled_from(options).flatmap(lambda strategy: strategy)


def _value(valid: list[Any], invalid: list[Any] = ()) -> st.SearchStrategy[Any]:  # type: ignore[assignment]
    """Mostly a valid value, sometimes a wrong one, sometimes anything."""
    good = st.sampled_from(valid)
    options = [good] * 16 + [_small]
    if invalid:
        options.append(st.sampled_from(list(invalid)))
    return _weighted(options)


_READABLE = os.path.abspath(__file__)

_SERIAL_VALUES = {
    "port": _value(["/dev/ttyUSB0", "loop://"], [""]),
    "baudrate": _value([9600, 115200], [-1, 1.5]),
    "bytesize": _value(["SEVENBITS", "EIGHTBITS", 7, 8], [9, "8"]),
    "parity": _value(["EVEN", "NONE", "E", "N"], ["even"]),
    "stopbits": _value(["ONE", "ONE_POINT_FIVE", 1, 1.5, 2], [3, True]),
    "timeout": _value([None, 0, 0.5], [-1]),
    "xonxoff": _value([True, False]),
    "rtscts": _value([True, False]),
    "write_timeout": _value([None, 1], [-1]),
    "dsrdtr": _value([True, False, None]),
    "inter_byte_timeout": _value([None, 0.1], [-1]),
    "exclusive": _value([True, False, None]),
}
_MATCH_VALUES = {
    "vid": _value([0x303A, "0x303A", "0x30*"], [0x10000, ""]),
    "pid": _value([1, "0x1001"], [-1]),
    "serial_number": _value(["ABC*"], [""]),
    "product": _value(["CP210?", "*"]),
}
_SSL_VALUES = {
    "certfile": _value([_READABLE], ["/nonexistent/cert.pem", ""]),
    "keyfile": _value([_READABLE], ["/nonexistent/key.pem"]),
}
_SERVER_VALUES = {
    "send_timeout": _value([None, 0, 2.5], [-1]),
    "buffer_limit": _value([None, 0, 4096], [-1, 1.5]),
    "handshake_timeout": _value([None, 1], [0]),
}


def _object(
    required: dict[str, Any],
    optional: dict[str, Any] = {},  # noqa: B006
    unknown_keys: bool = True,
) -> st.SearchStrategy[Any]:
    """Mostly objects with the known keys (plausible or random values, maybe
    one unknown key), sometimes any JSON value at all."""
    shaped = st.fixed_dictionaries(required, optional=optional)
    if unknown_keys:
        shaped = st.builds(
            lambda known, extra: {**extra, **known},
            shaped,
            st.dictionaries(st.text(max_size=6), _scalars, max_size=1),
        )
    return _weighted([shaped] * 12 + [_small])


_match = st.one_of(
    _object({"vid": _MATCH_VALUES["vid"]}, {k: v for k, v in _MATCH_VALUES.items() if k != "vid"}, False),
    _object({"serial_number": _MATCH_VALUES["serial_number"]}, {"product": _MATCH_VALUES["product"]}, False),
)
_serial = st.one_of(
    # An unknown serial or match key is an error: add one only now and then.
    _object(
        {"port": _SERIAL_VALUES["port"]}, {k: v for k, v in _SERIAL_VALUES.items() if k != "port"}, False
    ),
    _object({"match": _match}, _SERIAL_VALUES, False),
    _object({"match": _object({}, _MATCH_VALUES)}, _SERIAL_VALUES),
)
_server = st.one_of(
    _object(
        {
            "protocol": _value(["tcp", "TELNET", "Tcp"], ["udp"]),
            "address": _value(["127.0.0.1", ""]),
            "port": _value([10001, 1, 65535], [0, 65536, "abc"]),
        },
        {**_SERVER_VALUES, "endpoint": _value([None, "tcp:10001"], [""])},
    ),
    _object(
        {"protocol": _value(["socket"]), "address": _value(["/tmp/ser2tcp.sock"], ["/" + "s" * 107])},
        {**_SERVER_VALUES, "mode": _value([None, "0660"], ["999", 660])},
    ),
    _object(
        {
            "protocol": _value(["ssl", "SSL"]),
            "address": _value(["127.0.0.1"]),
            "port": _value([10002]),
            "ssl": _object(_SSL_VALUES, {"ca_certs": _value([_READABLE, None])}),
        },
        _SERVER_VALUES,
    ),
)
_port = _object({"serial": _serial, "servers": st.lists(_server, max_size=3)})
_ports = st.lists(_port, min_size=1, max_size=3)
_configs = st.one_of(
    _json,
    _object({"ports": _ports}),
    _object({"ports": _ports}),
    _object({"ports": _ports}),
    _ports,
)


class PropertyTests(SynchronousTestCase):
    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples every run: no flaky failures
        phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure is reported at once
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(_configs)
    # Inputs that once escaped as another exception or a multi-line message,
    # checked on every run (json.loads gives each of them from a file).
    @example({"ports": [{"serial": {"match": {"\n": "x"}}, "servers": []}]})
    @example([{"serial": {"port": "/dev/x", "baudrate": float("inf")}, "servers": []}])
    @example([{"serial": {"port": "/dev/x"}, "servers": [{"protocol": "socket", "address": "\ud800"}]}])
    @example(
        [
            {
                "serial": {"port": "/dev/x"},
                "servers": [{**tcp(protocol="ssl"), "ssl": {"certfile": "a\x00", "keyfile": "b"}}],
            }
        ]
    )
    def test_any_json_value_gives_a_config_or_a_one_line_config_error(self, data: Any) -> None:
        try:
            config = parse_config(data, source="prop.json")
        except ConfigError as e:
            message = str(e)
            self.assertNotIn("\n", message)
            self.assertTrue(message.startswith("prop.json: "), message)
            return
        self.assertIsInstance(config, Config)
        self.assertTrue(config.ports)
        for port in config.ports:
            self.assertIsInstance(port, PortConfig)
            self.assertTrue("port" in port.serial.settings or port.serial.match is not None)
            for server in port.servers:
                self.assertIn(server.protocol, ("tcp", "telnet", "ssl", "socket"))
        for warning in config.warnings:
            self.assertTrue(warning.startswith("prop.json: "), warning)
