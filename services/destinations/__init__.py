"""Replication destinations: one module per ``type`` (local, rsync, s3, command), each
exposing ``DESTINATION``, a subclass of ``base.Destination``. Adding a type adds a module."""

from __future__ import annotations

import importlib

from dcb.services.config import Config
from dcb.services.destinations.base import Destination, DestinationError
from dcb.services.errors import UsageError

__all__ = ["Destination", "DestinationError", "open_destination"]


def open_destination(cfg: Config, name: str) -> Destination:
    dests = cfg.replication.destinations
    if name not in dests:
        raise UsageError(f"no destination {name!r} in [replication]",
                         hint="configured: " + (", ".join(dests) or "none; add a "
                                                "[replication.NAME] table"))
    d = dests[name]
    module = importlib.import_module(f"dcb.services.destinations.{d.type}")
    cls: type[Destination] = module.DESTINATION
    return cls(name, d, cfg)
