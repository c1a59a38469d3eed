"""The dashboard's replication pane: each destination, its newest copy, lag, last error."""

from __future__ import annotations

from collections.abc import Sequence

from textual.widgets import DataTable

from dcb.services import formatting as fmt
from dcb.services.replicate import DestinationState


def lag_markup(s: DestinationState, rpo_hours: float) -> str:
    if s.lag_seconds is None:
        return "-"
    if s.lag_seconds == 0:
        return "[green]up to date[/]"
    colour = "b red" if s.lag_seconds > rpo_hours * 3600 else "yellow"
    return f"[{colour}]{fmt.duration(s.lag_seconds)}[/] ({s.pending} pending)"


class DestinationsPane(DataTable[str]):
    """Hidden when no ``[replication.NAME]`` is configured."""

    def __init__(self, rpo_hours: float = 24.0, **kwargs: object) -> None:
        super().__init__(cursor_type="none", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.rpo_hours = rpo_hours

    def on_mount(self) -> None:
        self.border_title = "Off-site copies"
        for label, key in (("Destination", "name"), ("Type", "type"), ("Newest copy", "newest"),
                           ("Lag", "lag"), ("Last error", "error")):
            self.add_column(label, key=key)

    def show(self, states: Sequence[DestinationState]) -> None:
        self.display = bool(states)
        self.clear()
        for s in states:
            newest = "[yellow]none yet[/]"
            if s.newest_copy:
                from dcb.services.store import parse_set_id

                newest = f"{s.newest_copy} ({fmt.age(parse_set_id(s.newest_copy))})"
            error = f"[b red]{s.last_error[:80]}[/]" if s.last_error else "-"
            self.add_row(s.name, s.type, newest, lag_markup(s, self.rpo_hours), error,
                         key=s.name)
