"""Keep the ``ser2tcp`` command's memory small.

``twisted.python.compat`` (imported by ``twisted.logger``) binds
``http.cookiejar`` for a deprecated alias; importing it loads ``urllib.request``,
``http.client``, the ``email`` package and more: about 4 MiB of the daemon's
idle memory, for modules it never uses.  :func:`defer_import` registers such a
module with the standard library's :class:`importlib.util.LazyLoader`, so it
is executed only if something actually touches one of its attributes: the
behaviour is unchanged, only the cost moves to first use.

It must run before Twisted is imported, and only in a process ser2tcp owns
(the console script); under ``twist``/``twistd`` Twisted is loaded already
and this is a no-op.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

#: Modules Twisted imports at startup that the daemon never uses.
UNUSED_AT_RUN_TIME = ("http.cookiejar",)


def defer_import(name: str) -> None:
    """Make ``import name`` cheap until the module is really used."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        # ``from parent import child`` looks the attribute up first; without
        # it, the import system would touch (and so load) the module.
        setattr(importlib.import_module(parent), child, module)


def defer_unused_imports() -> None:
    for name in UNUSED_AT_RUN_TIME:
        defer_import(name)
