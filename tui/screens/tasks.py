"""Long work with progress: backup, verify; and the prune preview; and a set's details."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Label, RadioButton, RadioSet, Static

from dcb.services import formatting as fmt
from dcb.services.backup import BackupRequest, BackupRun
from dcb.services.config import Config, RetentionConfig
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import Cancelled, DcbError
from dcb.services.postgres import PgGateway
from dcb.services.progress import Event
from dcb.services.prune import PlanChanged, PrunePlan, PruneResult, execute, preview
from dcb.services.replicate import ReplicationResult, replicate, replicate_after_backup
from dcb.services.retention import REASON_REMOVE, Decision, items_of
from dcb.services.running import RunningSet, running_sets
from dcb.services.state import state_for
from dcb.services.store import BackupSet, BackupStore, read_manifest
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
        self.replication: ReplicationResult | None = None

    def work(self) -> BackupSet:
        req = {"all": BackupRequest(),
               "databases": BackupRequest(volumes=()),
               "volumes": BackupRequest(databases=())}[self.scope]
        s = BackupRun(self.cfg, self.reporter, self.cancel).run(req)
        # [replication] after_backup: the new set goes off-site at once, same progress.
        self.replication = replicate_after_backup(self.cfg, s, self.reporter, self.cancel)
        return s

    def describe(self, result: Any) -> str:
        s: BackupSet = result
        text = (f"[green]✓ backup {s.id} complete[/]: {len(s.artifacts)} artifacts, "
                f"{fmt.size(s.size_bytes)} in {fmt.duration(s.duration_seconds)}")
        for d in self.replication.destinations if self.replication else ():
            text += (f"\n[b red]✗ replication to {d.name}: {d.error}[/]" if d.error
                     else f"\n[green]✓ replicated to {d.name}[/]")
        return text


class ReplicateScreen(TaskScreen):
    """``R``: the selected set to every destination, with the backup's progress display."""

    title_text = "Replicate"

    def __init__(self, cfg: Config, set_id: str) -> None:
        super().__init__(cfg)
        self.set_id = set_id
        self.title_text = f"Replicate {set_id}"

    def work(self) -> ReplicationResult:
        return replicate(self.cfg, [self.set_id], reporter=self.reporter, cancel=self.cancel)

    def describe(self, result: Any) -> str:
        r: ReplicationResult = result
        lines = []
        for d in r.destinations:
            if d.error:
                lines.append(f"[b red]✗ {d.name}: {d.error}[/]")
            elif d.copied:
                lines.append(f"[green]✓ {d.name}: copied and verified[/] "
                             f"({fmt.size(d.bytes)} in {fmt.duration(d.seconds)})")
            else:
                lines.append(f"[green]✓ {d.name}: already there[/]")
        return "\n".join(lines)


class VerifyScreen(TaskScreen):
    title_text = "Verify"

    def __init__(self, cfg: Config, set_id: str, deep: bool) -> None:
        super().__init__(cfg)
        self.set_id = set_id
        self.deep = deep
        self.title_text = f"{'Deep verify' if deep else 'Verify'} {set_id}"

    def work(self) -> SetCheck:
        from dcb.services.state import state_for

        s = BackupStore.for_config(self.cfg).get(self.set_id)
        gw = pg = None
        if self.deep:
            gw = DockerGateway.connect(self.cfg.timeouts.docker_api)
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
        state_for(self.cfg).append_history({"kind": "verify", "id": s.id, "ok": r.ok,
                                            "deep": self.deep, "at": verified_now(),
                                            "problems": r.problems()})
        return r

    def describe(self, result: Any) -> str:
        r: SetCheck = result
        if r.ok:
            return f"[green]✓ {r.set_id} verified[/]" + (" (deep)" if r.deep else "")
        return f"[b red]✗ {r.set_id} FAILED[/]\n" + "\n".join(r.problems())


class PrunePlanned(Message):
    """A prune preview is ready (``note``: why it was made again)."""

    def __init__(self, plan: PrunePlan | None, error: DcbError | None = None,
                 note: str = "") -> None:
        super().__init__()
        self.plan = plan
        self.error = error
        self.note = note


def _policy_text(r: RetentionConfig) -> str:
    """``keep_last=0 daily=7 weekly=4 monthly=12``, per group when they differ."""
    def one(p: RetentionConfig) -> str:
        return (f"keep_last={p.keep_last} daily={p.keep_daily} weekly={p.keep_weekly} "
                f"monthly={p.keep_monthly}")

    dbs, vols = r.for_group("databases"), r.for_group("volumes")
    return one(dbs) if dbs == vols else f"databases {one(dbs)}; volumes {one(vols)}"


def _short_reasons(d: Decision) -> str:
    """The table's decision text: "all 5 items: daily 1" when every item of the set is kept by
    the same rules (the pane below the table lists them by name)."""
    rules = {k.rules for k in d.kept_by}
    if len(d.kept_by) > 1 and len(rules) == 1 and len(d.kept_by) == len(items_of(d.set)):
        return f"all {len(d.kept_by)} items: {', '.join(d.kept_by[0].rules)}"
    return "; ".join(r for r in d.reasons if r != REASON_REMOVE)


class PruneScreen(Screen[bool]):
    """What prune would remove and why; ``x`` removes exactly what is shown, after confirmation.

    The screen holds the ``PrunePlan`` it shows and hands that plan to the service: if the store
    changed so that a shown removal no longer holds, nothing is removed and the new plan
    replaces the table (restic's forget, with k9s's rule that the dialog holds the action).
    """

    BINDINGS = [Binding("escape", "dismiss(False)", "Back"),
                Binding("x", "prune", "Remove", id="prune")]

    def __init__(self, cfg: Config, now: datetime | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.now = now
        """The clock for the plan (tests pin it); None: the real time."""
        self.plan: PrunePlan | None = None
        self.busy = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("[b]Prune[/]: reading the backup store…", id="summary")
        yield DataTable(id="plan", cursor_type="row", zebra_stripes=True)
        yield Static("", id="prune-why")
        yield Footer()

    def on_mount(self) -> None:
        t = self.query_one(DataTable)
        t.add_columns("ID", "Created", "Status", "Size", "Decision")
        t.focus()
        self.busy = True
        self.make_plan()

    @work(thread=True, exclusive=True, group="prune-plan", exit_on_error=False)
    def make_plan(self) -> None:
        try:
            self.post_message(PrunePlanned(preview(self.cfg, self.now)))
        except DcbError as e:
            self.post_message(PrunePlanned(None, e))
        except Exception as e:  # keep the type in the message; never crash the console
            self.post_message(PrunePlanned(None, DcbError(f"{type(e).__name__}: {e}")))

    @on(PrunePlanned)
    def _planned(self, msg: PrunePlanned) -> None:
        self.busy = False
        if msg.plan is None:
            err = msg.error or DcbError("no plan")
            self.query_one("#summary", Static).update(f"[b red]✗ {escape(err.message)}[/]")
            return
        self.show_plan(msg.plan, msg.note)

    def show_plan(self, plan: PrunePlan, note: str = "") -> None:
        self.plan = plan
        t = self.query_one(DataTable)
        t.clear()
        for d in plan.decisions:
            s = d.set
            status = s.status if s.purpose == "backup" else f"{s.status} ({s.purpose})"
            why = _short_reasons(d)
            decision = ("[green]keep[/]" if d.keep else "[red]remove[/]") + (
                f": {why}" if why else "")
            t.add_row(s.id, s.created_at.strftime("%Y-%m-%d %H:%M"), status,
                      fmt.size(s.size_bytes), decision, key=s.id)
        gone = plan.removals
        text = (f"[b]Prune[/] with {_policy_text(plan.policy)}, per database and volume: "
                f"{len(gone)} of {len(plan.decisions)} sets would be removed, freeing "
                f"{fmt.size(plan.bytes_to_free)}."
                + (" Press x to remove them." if gone else ""))
        if note:
            text = f"[b yellow]{escape(note)}[/]\n" + text
        self.query_one("#summary", Static).update(text)
        self._show_why(0)
        self.app.refresh_bindings()

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_why(event.cursor_row)

    def _show_why(self, row: int) -> None:
        why = self.query_one("#prune-why", Static)
        if self.plan is None or not 0 <= row < len(self.plan.decisions):
            why.update("")
            return
        d = self.plan.decisions[row]
        head = f"[b]{d.set.id}[/] " + ("[green]kept[/]" if d.keep else "[red]removed[/]")
        reasons = ["no rule keeps any of its items: newer copies of each are kept"
                   if r == REASON_REMOVE else r for r in d.reasons]
        why.update("\n".join([head, *(f"  {r}" for r in reasons)]))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "prune" and (self.busy or self.plan is None or not self.plan.removals):
            return None  # shown disabled: nothing (yet) to remove
        return True

    def action_prune(self) -> None:
        plan = self.plan
        if plan is None or self.busy:
            return
        gone = plan.removals
        if not gone:
            self.notify("nothing to remove")
            return

        def decided(yes: bool | None) -> None:
            if yes:
                self.busy = True
                self.app.refresh_bindings()
                self.run_prune(plan)

        self.app.push_screen(ConfirmScreen(
            f"Remove {len(gone)} backup sets ({fmt.size(plan.bytes_to_free)})?\n\n"
            + "\n".join(d.set.id for d in gone[:10]) + ("\n…" if len(gone) > 10 else ""),
            yes="Remove", danger=True), decided)

    @work(thread=True, exclusive=True, group="prune-run", exit_on_error=False)
    def run_prune(self, plan: PrunePlan) -> None:
        try:
            result = execute(self.cfg, plan, self.now)
        except PlanChanged as e:
            self.post_message(PrunePlanned(e.current, note=f"{e.message}. Nothing was "
                                           "removed; this is the new plan."))
            return
        except DcbError as e:
            self.post_message(TaskDone(error=e))
            return
        except Exception as e:  # keep the type in the message; never crash the console
            self.post_message(TaskDone(error=DcbError(f"{type(e).__name__}: {e}")))
            return
        self.post_message(TaskDone(result=result))

    @on(TaskDone)
    def _pruned(self, msg: TaskDone) -> None:
        self.busy = False
        self.app.refresh_bindings()
        if msg.error is not None:
            self.notify(msg.error.message + (f"\n{msg.error.hint}" if msg.error.hint else ""),
                        severity="error")
            return
        res: PruneResult = msg.result
        text = f"removed {len(res.removed)} sets, freed {fmt.size(res.freed_bytes)}"
        if res.also_removable:
            text += f"; {len(res.also_removable)} more can go now: press p again"
        self.notify(text)
        self.dismiss(True)


RUNNING_POLL_SECONDS = 1.0
"""How often the detail of a set being written re-reads its progress."""


class RunningPolled(Message):
    def __init__(self, running: RunningSet | None, s: BackupSet | None) -> None:
        super().__init__()
        self.running = running
        self.set = s


class SetDetailScreen(Screen[None]):
    """One set's artifacts and row counts; for a set being written (``running``), who writes
    it, since when and how far it is, re-read every second until the run ends (no restore
    or verify is offered from here: the set is not complete)."""

    BINDINGS = [Binding("escape,q", "dismiss", "Back")]

    def __init__(self, s: BackupSet, running: RunningSet | None = None,
                 cfg: Config | None = None) -> None:
        super().__init__()
        self.set = s
        self.running = running
        self.cfg = cfg

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="set-head")
        yield DataTable(id="artifacts", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="rows", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self._show_set()
        self.query_one("#artifacts", DataTable).focus()
        if self.running is not None and self.cfg is not None:
            self.set_timer(RUNNING_POLL_SECONDS, self._poll)

    def _show_set(self) -> None:
        s = self.set
        run = self.running
        if run is not None:
            since = run.since or s.created_at
            head = [f"[b]{s.id}[/]  [b blue]running[/]: {escape(run.holder.describe())}",
                    f"since {since:%Y-%m-%d %H:%M:%S} UTC ({fmt.age(since)})",
                    f"{fmt.size(run.bytes_written)} written so far, "
                    f"{len(run.done)} artifact(s) done"
                    + (f", writing {escape(', '.join(run.writing))}" if run.writing else ""),
                    "[dim]restore and verify are offered once the backup completes[/]"]
            self.query_one("#set-head", Static).update("\n".join(head))
        else:
            line = [f"[b]{s.id}[/]  {s.status}  created {s.created_at:%Y-%m-%d %H:%M:%S} UTC "
                    f"({fmt.age(s.created_at)})  {fmt.size(s.size_bytes)}"]
            if s.duration_seconds is not None:
                line.append(f"took {fmt.duration(s.duration_seconds)}")
            if s.error:
                line.append(f"[red]error: {escape(s.error)}[/]")
            self.query_one("#set-head", Static).update("  ".join(line))
        t = self.query_one("#artifacts", DataTable)
        t.clear(columns=True)
        r = self.query_one("#rows", DataTable)
        r.clear(columns=True)
        if run is not None:
            t.border_title = "Files so far"
            t.add_columns("File", "State")
            for name in run.done:
                t.add_row(name, "done")
            for name in run.writing:
                t.add_row(name, "writing")
            r.display = False
            return
        r.display = True
        t.border_title = "Artifacts"
        t.add_columns("Kind", "Name", "File", "Size", "Took", "SHA-256")
        for a in self.set.artifacts:
            t.add_row(a.kind, a.name, a.file, fmt.size(a.size_bytes),
                      fmt.duration(a.source.get("seconds")), (a.sha256 or "-")[:24])
        r.border_title = "Rows at dump time"
        r.add_columns("Database", "Table", "Rows")
        for a in self.set.artifacts:
            for table, n in (a.source.get("row_counts") or {}).items():
                r.add_row(a.name, table, f"{n:,}")

    @work(thread=True, exclusive=True, group="set-detail-poll", exit_on_error=False)
    def _poll(self) -> None:
        cfg = self.cfg
        assert cfg is not None
        s: BackupSet | None = self.set
        run = running_sets(state_for(cfg).root, [self.set]).get(self.set.id)
        if run is None:  # the run ended: its manifest says how, if it wrote one
            try:
                s = read_manifest(self.set.path)
            except (DcbError, OSError):
                s = None
        self.post_message(RunningPolled(run, s))

    @on(RunningPolled)
    def _polled(self, msg: RunningPolled) -> None:
        self.running = msg.running
        if msg.set is not None:
            self.set = msg.set
        self._show_set()
        if self.running is not None:  # re-armed after each poll: polls never overlap
            self.set_timer(RUNNING_POLL_SECONDS, self._poll)
