"""Textual messages carrying the services' events to the UI thread."""

from __future__ import annotations

from textual.message import Message

from dcb.services.events import WatchEvent
from dcb.services.progress import BytesProgress, Event


class ServiceEvent(Message):
    """One event from a service's reporter (posted from a worker thread)."""

    def __init__(self, event: Event, source: str = "") -> None:
        super().__init__()
        self.event = event
        self.source = source

    def can_replace(self, message: Message) -> bool:
        # A newer byte count of the same stage makes a pending older one pointless.
        return (isinstance(message, ServiceEvent) and isinstance(self.event, BytesProgress)
                and isinstance(message.event, BytesProgress)
                and message.event.stage == self.event.stage)


class ContainerEvent(Message):
    def __init__(self, event: WatchEvent) -> None:
        super().__init__()
        self.event = event
