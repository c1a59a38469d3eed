"""Recovery objectives: RPO per database/volume, last drill's RTO, restore timelines."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from dcb.services import formatting as fmt
from dcb.services.config import Config
from dcb.services.objectives import Objectives, objectives


class ObjectivesScreen(Screen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Back")]

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.data: Objectives | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="rto")
        yield DataTable(id="rpo", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="incidents", cursor_type="row", zebra_stripes=True)
        yield Static("", id="timeline")
        yield Footer()

    def on_mount(self) -> None:
        o = self.data = objectives(self.cfg)
        rpo = self.query_one("#rpo", DataTable)
        rpo.border_title = f"Recovery point (target {fmt.duration(o.rpo.total_seconds())})"
        rpo.add_columns("Kind", "Name", "Newest verified", "Newest backup", "RPO")
        for i in o.items:
            rpo.add_row(i.kind, i.name, fmt.age(i.newest_verified), fmt.age(i.newest_any),
                        "[green]met[/]" if i.rpo_ok else "[b red]missed[/]")
        if o.last_drill_rto is None:
            rto = "[yellow]no drill yet[/]: run `dcb drill` to measure the time to recover"
        else:
            verdict = "[green]met[/]" if o.rto_ok else "[b red]missed[/]"
            rto = (f"Last drill ({o.last_drill_at}): "
                   f"{'passed' if o.last_drill_ok else '[red]FAILED[/]'}, time to recover "
                   f"{fmt.duration(o.last_drill_rto)} against a target of "
                   f"{fmt.duration(o.rto.total_seconds())}: {verdict}")
        self.query_one("#rto", Static).update(rto)
        inc = self.query_one("#incidents", DataTable)
        inc.border_title = "Restores and drills (Enter: timeline)"
        inc.add_columns("When", "Kind", "Set", "Result", "Took")
        for n in o.incidents:
            inc.add_row(n.at, n.kind, n.set_id, "ok" if n.ok else "[red]FAILED[/]",
                        fmt.duration(n.seconds), key=n.id)
        rpo.focus()

    @on(DataTable.RowHighlighted, "#incidents")
    @on(DataTable.RowSelected, "#incidents")
    def _timeline(self, event: DataTable.RowHighlighted | DataTable.RowSelected) -> None:
        if self.data is None:
            return
        n = next((i for i in self.data.incidents if i.id == event.row_key.value), None)
        if n is None:
            return
        lines = [f"[b]{n.kind} {n.id}[/] of {n.set_id}"]
        for s in n.steps:
            lines.append(f"  {s['started_at']}  {s['title']}  {fmt.duration(s['seconds'])}  "
                         f"{s['outcome']}" + (f"  {s['detail']}" if s.get("detail") else ""))
        self.query_one("#timeline", Static).update("\n".join(lines))
