"""What every part of the config parser shares: the error that carries a
key path, and the checks of JSON types (``true`` is an ``int`` in Python:
a number must never be a boolean, nor the other way round)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any


class Invalid(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where = where
        self.problem = problem


def show(value: Any) -> str:
    """A config value as the user wrote it, kept short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def at_key(where: str, key: str) -> str:
    """The key path of ``key`` inside ``where``; odd keys are quoted, so that
    a message stays one line whatever the config holds."""
    if _IDENTIFIER.match(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key)}]"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def count(value: Any, where: str) -> int:
    """A number of connections: a whole number >= 0 (0, like null, is no limit)."""
    if value is None:
        return 0
    if not is_int(value) or value < 0:
        raise Invalid(where, f"expected a whole number >= 0 (0: no limit), got {show(value)}")
    return int(value)


def choice(value: Any, choices: Sequence[str], where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise Invalid(where, "expected one of " + ", ".join(choices) + f", got {show(value)}")
    return value


class ParserBase:
    """Collects the warnings of one parse (unknown keys)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def warn_unknown(self, obj: Mapping[str, Any], known: Sequence[str], where: str) -> None:
        for key in obj:
            if key not in known:
                self.warnings.append(f"{self.source}: {at_key(where, key)}: unknown key, ignored")
