"""Long work with progress: backup, verify; and the prune preview; and a set's details."""

from __future__ import annotations

import threading
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Label, RadioButton, RadioSet, Static

from dcb.services import formatting as fmt
from dcb.services.backup import BackupRequest, BackupRun
from dcb.services.config import Config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import Cancelled, DcbError
from dcb.services.postgres import PgGateway
from dcb.services.progress import Event
from dcb.services.prune import plan_prune, prune
from dcb.services.retention import Decision
from dcb.services.store import BackupSet, BackupStore
from dcb.services.verify import SetCheck, verified_now, verify_set
from dcb.tui.messages import ServiceEvent
from dcb.tui.screens.common import ConfirmScreen
from dcb.widgets.progress_panel import ProgressPanel


class TaskDone(Message):
    def __init__(self, result: Any = None, error: DcbError | None = None) -> None:
        super().__init__()
        self.result = result
        self.error = error


class BackupScopeScreen(ModalScreen[str | None]):
    """Choose what to back up."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("[b]Back up now[/]")
            with RadioSet(id="scope"):
                yield RadioButton("Everything (databases and volumes)", value=True, id="all")
                yield RadioButton("Databases only", id="databases")
                yield RadioButton("Volumes only", id="volumes")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Start backup", id="start", variant="primary")

    def on_mount(self) -> None:
        self.query_one(RadioSet).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id != "start":
            self.dismiss(None)
            return
        pressed = self.query_one(RadioSet).pressed_button
        self.dismiss(pressed.id if pressed is not None else "all")


class TaskScreen(Screen[Any]):
    """Runs one service call in a worker and shows its event stream."""

    BINDINGS = [
        Binding("escape", "leave", "Back / cancel", id="leave"),
        Binding("c", "cancel_task", "Cancel", id="cancel"),
    ]
    title_text = "Task"

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.cancel = threading.Event()
        self.running = False
        self.result: Any = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"[b]{self.title_text}[/]", id="task-title")
        yield ProgressPanel(id="panel")
        yield Static("", id="task-result")
        yield Footer()

    def on_mount(self) -> None:
        self.running = True
        self.run_task()

    def reporter(self, e: Event) -> None:
        self.post_message(ServiceEvent(e))

    @work(thread=True, exclusive=True, group="task", exit_on_error=False)
    def run_task(self) -> None:
        try:
            result = self.work()
        except DcbError as e:
            self.post_message(TaskDone(error=e))
            return
        except Exception as e:  # keep the type in the message; never crash the console
            self.post_message(TaskDone(error=DcbError(f"{type(e).__name__}: {e}")))
            return
        self.post_message(TaskDone(result=result))

    def work(self) -> Any:
        raise NotImplementedError

    @on(ServiceEvent)
    def _event(self, msg: ServiceEvent) -> None:
        self.query_one(ProgressPanel).handle(msg.event)

    @on(TaskDone)
    def _done(self, msg: TaskDone) -> None:
        self.running = False
        self.result = msg.result
        box = self.query_one("#task-result", Static)
        if msg.error is not None:
            box.update(f"[b red]✗ {msg.error.message}[/]"
                       + (f"\n{msg.error.hint}" if msg.error.hint else "")
                       + "\n[dim]escape: back[/]")
            box.add_class("error")
        else:
            box.update(self.describe(msg.result) + "\n[dim]escape: back[/]")
            box.add_class("ok")
        self.app.refresh_bindings()

    def describe(self, result: Any) -> str:
        return "[green]✓ done[/]"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_task" and not self.running:
            return None  # shown disabled: nothing to cancel
        return True

    def action_cancel_task(self) -> None:
        if not self.running:
            return

        def decided(yes: bool | None) -> None:
            if yes:
                self.cancel.set()
                self.query_one(ProgressPanel).log_line("[yellow]cancelling…[/]")

        self.app.push_screen(ConfirmScreen(
            f"Cancel this {self.title_text.lower()}?\n\nWhat is written so far is discarded; "
            "containers that were stopped are started again.", yes="Cancel it", no="Keep going",
            danger=True), decided)

    def action_leave(self) -> None:
        if self.running:
            self.action_cancel_task()
        else:
            self.dismiss(self.result)


class BackupScreen(TaskScreen):
    title_text = "Backup"

    def __init__(self, cfg: Config, scope: str = "all") -> None:
        super().__init__(cfg)
        self.scope = scope

    def work(self) -> BackupSet:
        req = {"all": BackupRequest(),
               "databases": BackupRequest(volumes=()),
               "volumes": BackupRequest(databases=())}[self.scope]
        return BackupRun(self.cfg, self.reporter, self.cancel).run(req)

    def describe(self, result: Any) -> str:
        s: BackupSet = result
        return (f"[green]✓ backup {s.id} complete[/]: {len(s.artifacts)} artifacts, "
                f"{fmt.size(s.size_bytes)} in {fmt.duration(s.duration_seconds)}")


class VerifyScreen(TaskScreen):
    title_text = "Verify"

    def __init__(self, cfg: Config, set_id: str, deep: bool) -> None:
        super().__init__(cfg)
        self.set_id = set_id
        self.deep = deep
        self.title_text = f"{'Deep verify' if deep else 'Verify'} {set_id}"

    def work(self) -> SetCheck:
        from dcb.services.backup import append_history

        s = BackupStore.for_config(self.cfg).get(self.set_id)
        gw = pg = None
        if self.deep:
            gw = DockerGateway.connect()
            st = self.cfg.stack
            pg = PgGateway(gw, st.postgres_container, st.postgres_user,
                           self.cfg.postgres_password())
        try:
            r = verify_set(s, deep=self.deep, pg=pg, reporter=self.reporter, cancel=self.cancel)
        except Cancelled:
            raise
        finally:
            if gw is not None:
                gw.close()
        append_history(self.cfg.backup_dir, {"kind": "verify", "id": s.id, "ok": r.ok,
                                             "deep": self.deep, "at": verified_now(),
                                             "problems": r.problems()})
        return r

    def describe(self, result: Any) -> str:
        r: SetCheck = result
        if r.ok:
            return f"[green]✓ {r.set_id} verified[/]" + (" (deep)" if r.deep else "")
        return f"[b red]✗ {r.set_id} FAILED[/]\n" + "\n".join(r.problems())


class PruneScreen(Screen[bool]):
    """What prune would remove and why; then confirmation."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Back"),
                Binding("x", "prune", "Remove", id="prune")]

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.decisions: list[Decision] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("[b]Prune[/]: what the retention policy keeps and removes", id="summary")
        yield DataTable(id="plan", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        r = self.cfg.retention
        t = self.query_one(DataTable)
        t.add_columns("ID", "Created", "Status", "Size", "Decision")
        self.decisions = plan_prune(self.cfg)
        for d in self.decisions:
            decision = ("[green]keep[/]: " if d.keep else "[red]remove[/]: ") + ", ".join(d.reasons)
            t.add_row(d.set.id, d.set.created_at.strftime("%Y-%m-%d %H:%M"), d.set.status,
                      fmt.size(d.set.size_bytes), decision)
        gone = [d for d in self.decisions if not d.keep]
        self.query_one("#summary", Static).update(
            f"[b]Prune[/] with keep_last={r.keep_last} daily={r.keep_daily} "
            f"weekly={r.keep_weekly} monthly={r.keep_monthly}: "
            f"{len(gone)} of {len(self.decisions)} sets would be removed, freeing "
            f"{fmt.size(sum(d.set.size_bytes for d in gone))}. Press x to remove.")
        t.focus()

    def action_prune(self) -> None:
        gone = [d for d in self.decisions if not d.keep]
        if not gone:
            self.notify("nothing to remove")
            return

        def decided(yes: bool | None) -> None:
            if yes:
                try:
                    res = prune(self.cfg)
                except DcbError as e:
                    self.notify(e.message, severity="error")
                    return
                self.notify(f"removed {len(res.removed)} sets, freed {fmt.size(res.freed_bytes)}")
                self.dismiss(True)

        self.app.push_screen(ConfirmScreen(
            f"Remove {len(gone)} backup sets?\n\n" + "\n".join(d.set.id for d in gone[:10])
            + ("\n…" if len(gone) > 10 else ""), yes="Remove", danger=True), decided)


class SetDetailScreen(Screen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Back")]

    def __init__(self, s: BackupSet) -> None:
        super().__init__()
        self.set = s

    def compose(self) -> ComposeResult:
        s = self.set
        yield Header()
        head = [f"[b]{s.id}[/]  {s.status}  created {s.created_at:%Y-%m-%d %H:%M:%S} UTC "
                f"({fmt.age(s.created_at)})  {fmt.size(s.size_bytes)}"]
        if s.duration_seconds is not None:
            head.append(f"took {fmt.duration(s.duration_seconds)}")
        if s.error:
            head.append(f"[red]error: {s.error}[/]")
        yield Static("  ".join(head), id="set-head")
        yield DataTable(id="artifacts", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="rows", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        t = self.query_one("#artifacts", DataTable)
        t.border_title = "Artifacts"
        t.add_columns("Kind", "Name", "File", "Size", "Took", "SHA-256")
        for a in self.set.artifacts:
            t.add_row(a.kind, a.name, a.file, fmt.size(a.size_bytes),
                      fmt.duration(a.source.get("seconds")), (a.sha256 or "-")[:24])
        r = self.query_one("#rows", DataTable)
        r.border_title = "Rows at dump time"
        r.add_columns("Database", "Table", "Rows")
        for a in self.set.artifacts:
            for table, n in (a.source.get("row_counts") or {}).items():
                r.add_row(a.name, table, f"{n:,}")
        t.focus()
