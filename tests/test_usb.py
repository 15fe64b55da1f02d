"""Tests for ser2tcp.usb: matching USB serial devices and listing them."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.usb import MatchError, attribute, describe_usb_devices, find_device, matches


class FakePort:
    """What ``serial.tools.list_ports.comports()`` yields, reduced to its data."""

    def __init__(
        self,
        device: str,
        vid: int | None = None,
        pid: int | None = None,
        serial_number: str | None = None,
        manufacturer: str | None = None,
        product: str | None = None,
        location: str | None = None,
        description: str | None = None,
        hwid: str | None = None,
    ) -> None:
        self.device = device
        self.vid = vid
        self.pid = pid
        self.serial_number = serial_number
        self.manufacturer = manufacturer
        self.product = product
        self.location = location
        self.description = description
        self.hwid = hwid


ESP32 = FakePort(
    "/dev/ttyACM0",
    vid=0x303A,
    pid=0x1001,
    serial_number="F4:12:FA:00:11:22",
    manufacturer="Espressif",
    product="USB JTAG/serial debug unit",
    location="1-1.2:1.0",
    description="USB JTAG/serial debug unit",
    hwid="USB VID:PID=303A:1001 SER=F4:12:FA:00:11:22 LOCATION=1-1.2:1.0",
)
FTDI = FakePort("/dev/ttyUSB0", vid=0x0403, pid=0x6001, serial_number="A50285BI", manufacturer="FTDI")
BUILTIN = FakePort("/dev/ttyS0", description="ttyS0", hwid="PNP0501")


def comports_of(*ports: Any) -> Any:
    calls = []

    def comports() -> list[Any]:
        calls.append(None)
        return list(ports)

    comports.calls = calls  # type: ignore[attr-defined]
    return comports


class AttributeTests(SynchronousTestCase):
    def test_vid_pid_as_hex(self) -> None:
        self.assertEqual(attribute(ESP32, "vid"), "0x303A")
        self.assertEqual(attribute(ESP32, "pid"), "0x1001")
        self.assertEqual(attribute(FakePort("/dev/x", vid=1, pid=0xABCD), "vid"), "0x0001")
        self.assertEqual(attribute(FakePort("/dev/x", vid=1, pid=0xABCD), "pid"), "0xABCD")

    def test_text_attributes(self) -> None:
        self.assertEqual(attribute(ESP32, "manufacturer"), "Espressif")
        self.assertEqual(attribute(ESP32, "location"), "1-1.2:1.0")

    def test_missing_attribute_is_none(self) -> None:
        self.assertIsNone(attribute(BUILTIN, "vid"))
        self.assertIsNone(attribute(BUILTIN, "serial_number"))
        self.assertIsNone(attribute(object(), "product"))


class MatchesTests(SynchronousTestCase):
    def test_vid_and_pid(self) -> None:
        self.assertTrue(matches(ESP32, {"vid": "0x303A", "pid": "0x1001"}))
        self.assertFalse(matches(ESP32, {"vid": "0x303A", "pid": "0x1002"}))
        self.assertFalse(matches(FTDI, {"vid": "0x303A"}))

    def test_case_insensitive(self) -> None:
        self.assertTrue(matches(ESP32, {"vid": "0x303a"}))
        self.assertTrue(matches(ESP32, {"manufacturer": "ESPRESSIF"}))
        self.assertTrue(matches(ESP32, {"serial_number": "f4:12:fa:00:11:22"}))

    def test_wildcards(self) -> None:
        self.assertTrue(matches(ESP32, {"serial_number": "f4:12:*"}))
        self.assertTrue(matches(ESP32, {"product": "*jtag*"}))
        self.assertTrue(matches(ESP32, {"vid": "0x30?a"}))
        self.assertTrue(matches(ESP32, {"location": "1-1.?:1.0"}))
        self.assertFalse(matches(ESP32, {"location": "1-1.?"}))  # the whole value must match
        self.assertFalse(matches(ESP32, {"serial_number": "F4:12"}))
        self.assertTrue(matches(ESP32, {"hwid": "*SER=F4:12:FA:00:11:22*"}))

    def test_every_criterion_must_match(self) -> None:
        self.assertTrue(matches(FTDI, {"vid": "0x0403", "serial_number": "A5*", "manufacturer": "ftdi"}))
        self.assertFalse(matches(FTDI, {"vid": "0x0403", "serial_number": "A5*", "manufacturer": "x"}))

    def test_none_attributes_never_match(self) -> None:
        self.assertFalse(matches(BUILTIN, {"vid": "*"}))
        self.assertFalse(matches(BUILTIN, {"serial_number": "*"}))
        self.assertFalse(matches(FTDI, {"product": "*"}))
        self.assertFalse(matches(FTDI, {"product": "None"}))


class FindDeviceTests(SynchronousTestCase):
    def test_one_match(self) -> None:
        comports = comports_of(BUILTIN, FTDI, ESP32)
        self.assertEqual(find_device({"vid": "0x303A"}, comports), "/dev/ttyACM0")
        self.assertEqual(find_device({"serial_number": "a50285bi"}, comports), "/dev/ttyUSB0")

    def test_comports_is_asked_every_time(self) -> None:
        comports = comports_of(ESP32)
        find_device({"vid": "0x303A"}, comports)
        find_device({"vid": "0x303A"}, comports)
        self.assertEqual(len(comports.calls), 2)

    def test_no_match(self) -> None:
        with self.assertRaises(MatchError) as caught:
            find_device({"vid": "0x1234", "pid": "0x5678"}, comports_of(BUILTIN, FTDI, ESP32))
        self.assertEqual(str(caught.exception), 'no device found matching {"pid": "0x5678", "vid": "0x1234"}')

    def test_no_device_at_all(self) -> None:
        with self.assertRaises(MatchError) as caught:
            find_device({"product": "*"}, comports_of())
        self.assertEqual(str(caught.exception), 'no device found matching {"product": "*"}')

    def test_several_matches(self) -> None:
        other = FakePort("/dev/ttyACM1", vid=0x303A, pid=0x1001, serial_number="F4:12:FA:00:33:44")
        with self.assertRaises(MatchError) as caught:
            find_device({"vid": "0x303A"}, comports_of(other, FTDI, ESP32))
        self.assertEqual(
            str(caught.exception), 'several devices match {"vid": "0x303A"}: /dev/ttyACM0, /dev/ttyACM1'
        )

    def test_several_matches_narrowed(self) -> None:
        other = FakePort("/dev/ttyACM1", vid=0x303A, pid=0x1001, serial_number="F4:12:FA:00:33:44")
        self.assertEqual(
            find_device({"vid": "0x303A", "serial_number": "*33:44"}, comports_of(ESP32, other)),
            "/dev/ttyACM1",
        )


class DescribeTests(SynchronousTestCase):
    def test_listing(self) -> None:
        self.assertEqual(
            describe_usb_devices(comports_of(ESP32, BUILTIN, FTDI)),
            "/dev/ttyACM0\n"
            "  vid: 0x303A\n"
            "  pid: 0x1001\n"
            "  serial_number: F4:12:FA:00:11:22\n"
            "  manufacturer: Espressif\n"
            "  product: USB JTAG/serial debug unit\n"
            "  location: 1-1.2:1.0\n"
            "\n"
            "/dev/ttyUSB0\n"
            "  vid: 0x0403\n"
            "  pid: 0x6001\n"
            "  serial_number: A50285BI\n"
            "  manufacturer: FTDI\n"
            "\n",
        )

    def test_only_set_attributes_are_listed(self) -> None:
        bare = FakePort("/dev/ttyUSB3", vid=0x10C4, pid=0xEA60, serial_number="", product="CP2102")
        self.assertEqual(
            describe_usb_devices(comports_of(bare)),
            "/dev/ttyUSB3\n  vid: 0x10C4\n  pid: 0xEA60\n  product: CP2102\n\n",
        )

    def test_devices_without_vid_are_skipped(self) -> None:
        self.assertEqual(
            describe_usb_devices(comports_of(BUILTIN, FTDI, FakePort("/dev/ttyAMA0"))),
            "/dev/ttyUSB0\n  vid: 0x0403\n  pid: 0x6001\n  serial_number: A50285BI\n  manufacturer: FTDI\n\n",
        )

    def test_no_usb_device(self) -> None:
        self.assertEqual(describe_usb_devices(comports_of()), "No USB serial devices found\n")
        self.assertEqual(describe_usb_devices(comports_of(BUILTIN)), "No USB serial devices found\n")
