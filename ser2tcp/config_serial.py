"""The ``serial`` section of a port: pyserial settings, ``match`` and lines.

Every value is checked by its JSON type first and then by pyserial's own
setters on an unopened ``Serial``, so that a bad value stops the start
instead of failing when the first client connects."""

from __future__ import annotations

from typing import Any

import serial

from .config_check import Invalid, ParserBase, at_key, is_int, is_number, one_line, show
from .config_model import (
    _SYMBOLIC,
    FLAG_SETTINGS,
    LINE_KEYS,
    MATCH_KEYS,
    MAX_BAUDRATE,
    SERIAL_KEYS,
    TIMEOUT_SETTINGS,
    SerialConfig,
)


def _symbolic(key: str, value: Any, at: str) -> Any:
    """``"EVEN"`` -> ``"E"``; pyserial's own values pass, anything else is refused."""
    names, native = _SYMBOLIC[key]
    if isinstance(value, str) and value in names:
        return names[value]
    # bool is an int and 8.0 == 8: neither is how a size or a count is written.
    if isinstance(value, bool) or (key == "bytesize" and not is_int(value)) or value not in native:
        raise Invalid(
            at,
            "expected one of "
            + ", ".join(names)
            + " (or "
            + ", ".join(show(v) for v in native)
            + f"), got {show(value)}",
        )
    return value


def _check_setting(key: str, value: Any, at: str) -> None:
    """Refuse a serial setting of the wrong JSON type.

    pyserial's setters take any value as a flag (``"false"`` switches
    ``xonxoff`` on) and ``true`` or ``9600.5`` as a baud rate: its own checks
    cannot be the only ones."""
    if key == "baudrate":
        if not is_int(value) or not 1 <= value <= MAX_BAUDRATE:
            raise Invalid(
                at, f"expected a whole number of bits per second, 1 to {MAX_BAUDRATE}, got {show(value)}"
            )
    elif key in FLAG_SETTINGS:
        if not isinstance(value, bool):
            raise Invalid(at, f"expected true or false, got {show(value)}")
    elif key in TIMEOUT_SETTINGS:
        if value is not None and (not is_number(value) or value < 0):
            raise Invalid(at, f"expected a number of seconds >= 0 or null, got {show(value)}")


class SerialParser(ParserBase):
    def serial(self, data: Any, where: str) -> SerialConfig:
        if not isinstance(data, dict):
            raise Invalid(where, f"expected an object, got {show(data)}")
        match = None
        if "match" in data:
            match = self.match(data["match"], f"{where}.match")
        elif "port" not in data:
            raise Invalid(where, 'needs "port" or "match"')
        settings: dict[str, Any] = {}
        lines: dict[str, bool] = {}
        probe = serial.Serial()  # never opened: its setters validate values
        for key, value in data.items():
            at = at_key(where, key)
            if key == "match":
                continue
            if key in LINE_KEYS:
                if not isinstance(value, bool):
                    raise Invalid(at, f"expected true or false, got {show(value)}")
                lines[key] = value
                continue
            if key not in SERIAL_KEYS:
                raise Invalid(at, "unknown serial setting (known: " + ", ".join(SERIAL_KEYS) + ")")
            if key == "port":
                if match is not None:
                    continue  # match wins, as in the original ser2tcp
                if not isinstance(value, str) or not value:
                    raise Invalid(at, f"expected a device path or URL, got {show(value)}")
                settings[key] = value
                continue
            if key in _SYMBOLIC:
                value = _symbolic(key, value, at)
            else:
                _check_setting(key, value, at)
            try:
                setattr(probe, key, value)
            except (ValueError, TypeError, OverflowError) as e:
                raise Invalid(at, f"{one_line(e)} (got {show(value)})") from None
            settings[key] = getattr(probe, key)
        return SerialConfig(settings=settings, match=match, lines=lines)

    def match(self, data: Any, where: str) -> dict[str, str]:
        if not isinstance(data, dict):
            raise Invalid(where, f"expected an object, got {show(data)}")
        if not data:
            raise Invalid(where, "is empty: give at least one of " + ", ".join(MATCH_KEYS))
        result = {}
        for key, value in data.items():
            at = at_key(where, key)
            if key not in MATCH_KEYS:
                raise Invalid(at, "unknown match attribute (known: " + ", ".join(MATCH_KEYS) + ")")
            if key in ("vid", "pid") and is_int(value) and 0 <= value <= 0xFFFF:
                value = f"0x{value:04X}"
            if not isinstance(value, str) or not value:
                raise Invalid(at, f"expected a non-empty string pattern, got {show(value)}")
            result[key] = value
        return result
