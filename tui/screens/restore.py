"""The restore wizard: scope -> checks -> plan and confirmation -> execution -> result.

A state machine over services.restore.RestoreFlow. Nothing changes before the user has typed
the set id on the confirmation step (the service itself refuses without that token). Escape
goes back a step before execution; during execution leaving needs an explicit cancel that says
what state things will be left in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (
    Button,
    Checkbox,
    ContentSwitcher,
    Footer,
    Header,
    Input,
    Label,
    Static,
    Switch,
)

from dcb.services import formatting as fmt
from dcb.services.config import Config
from dcb.services.errors import DcbError, NotFound
from dcb.services.progress import Event, StageFailed, StageFinished, StageStarted
from dcb.services.restore import RestoreFlow, RestorePlan, RestoreReport, RestoreRequest
from dcb.services.store import BackupSet, BackupStore
from dcb.tui.messages import ServiceEvent
from dcb.tui.screens.common import ConfirmScreen
from dcb.widgets.progress_panel import ProgressPanel

STEPS = ("scope", "checks", "confirm", "run", "result")


@dataclass
class BlastRadius:
    volumes: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)


class Prepared(Message):
    def __init__(self, plan: RestorePlan | None, problems: list[str], blast: BlastRadius,
                 error: DcbError | None) -> None:
        super().__init__()
        self.plan = plan
        self.problems = problems
        self.blast = blast
        self.error = error


class Executed(Message):
    def __init__(self, report: RestoreReport | None, error: DcbError | None) -> None:
        super().__init__()
        self.report = report
        self.error = error


class RestoreWizard(Screen[RestoreReport | None]):
    BINDINGS = [
        Binding("escape", "back", "Back", id="back"),
        Binding("u", "undo", "Undo restore", id="undo"),
    ]

    def __init__(self, cfg: Config, set_id: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.set_id = set_id
        self.set: BackupSet | None = None
        self.step = "scope"
        self.cancel = threading.Event()
        self.plan: RestorePlan | None = None
        self.report: RestoreReport | None = None
        self.running = False

    # -- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="wizard-steps")
        with ContentSwitcher(initial="scope", id="wizard"):
            with VerticalScroll(id="scope"):
                yield Label("", id="scope-title")
                yield Vertical(id="scope-boxes")
                with Horizontal(classes="buttons"):
                    yield Button("Cancel", id="scope-cancel")
                    yield Button("Next: checks", id="scope-next", variant="primary")
            with Vertical(id="checks"):
                yield Static("Checking the set and the stack…", id="checklist")
                yield ProgressPanel(id="checks-panel")
                with Horizontal(classes="buttons"):
                    yield Button("Back", id="checks-back")
                    yield Button("Next: plan", id="checks-next", variant="primary",
                                 disabled=True)
            with VerticalScroll(id="confirm"):
                yield Static("", id="plan-text")
                yield Static("", id="blast")
                with Horizontal(id="safety-row"):
                    yield Switch(value=True, id="safety")
                    yield Label("Take a safety snapshot first (undo possible)")
                yield Label("", id="confirm-label")
                yield Input(placeholder="type the set id to confirm", id="confirm-input")
                with Horizontal(classes="buttons"):
                    yield Button("Back", id="confirm-back", variant="primary")
                    yield Button("Restore", id="confirm-go", variant="error", disabled=True)
            with Vertical(id="run"):
                yield Static("", id="run-steps")
                yield ProgressPanel(id="run-panel", hide_stages=())
            with VerticalScroll(id="result"):
                yield Static("", id="result-text")
                with Horizontal(classes="buttons"):
                    yield Button("Close", id="result-close", variant="primary")
                    yield Button("Undo (restore safety snapshot)", id="result-undo")
        yield Footer()

    def on_mount(self) -> None:
        try:
            self.set = BackupStore.for_config(self.cfg).get(self.set_id)
        except NotFound as e:
            self.notify(e.message, severity="error")
            self.dismiss(None)
            return
        s = self.set
        self.query_one("#scope-title", Label).update(
            f"[b]Restore from {s.id}[/] ({s.status}, {fmt.age(s.created_at)}, "
            f"{fmt.size(s.size_bytes)}): choose what to restore")
        boxes = self.query_one("#scope-boxes", Vertical)
        for a in s.artifacts:
            if a.kind in ("database", "volume"):
                boxes.mount(Checkbox(f"{a.kind} {a.name}  ({fmt.size(a.size_bytes)})",
                                     value=True, id=f"pick-{a.kind}-{a.name}",
                                     name=f"{a.kind}:{a.name}"))
        self._show("scope")

    def _show(self, step: str) -> None:
        self.step = step
        self.query_one(ContentSwitcher).current = step
        names = {"scope": "1 scope", "checks": "2 checks", "confirm": "3 plan & confirm",
                 "run": "4 restore", "result": "5 result"}
        self.query_one("#wizard-steps", Static).update("  →  ".join(
            f"[reverse b] {names[s]} [/]" if s == step else f"[dim]{names[s]}[/]"
            for s in STEPS))
        self.app.refresh_bindings()

    # -- step 1: scope --------------------------------------------------------------------
    def _request(self) -> RestoreRequest:
        dbs: list[str] = []
        vols: list[str] = []
        for box in self.query(Checkbox):
            if box.value and box.name:
                kind, _, name = box.name.partition(":")
                (dbs if kind == "database" else vols).append(name)
        return RestoreRequest(set_id=self.set_id, databases=tuple(dbs), volumes=tuple(vols),
                              safety_backup=self.query_one("#safety", Switch).value)

    @on(Button.Pressed, "#scope-next")
    def _scope_next(self) -> None:
        req = self._request()
        if not req.databases and not req.volumes:
            self.notify("choose at least one database or volume", severity="warning")
            return
        self._show("checks")
        self.query_one("#checks-next", Button).disabled = True
        self.query_one("#checklist", Static).update("Checking the set and the stack…")
        self.prepare(req)

    @on(Button.Pressed, "#scope-cancel")
    def _scope_cancel(self) -> None:
        self.dismiss(None)

    # -- step 2: checks -------------------------------------------------------------------
    def reporter(self, e: Event) -> None:
        self.post_message(ServiceEvent(e, source=self.step))

    @work(thread=True, exclusive=True, group="restore-prepare", exit_on_error=False)
    def prepare(self, req: RestoreRequest) -> None:
        flow = RestoreFlow(self.cfg, self.reporter, self.cancel)
        blast = BlastRadius()
        try:
            plan = flow.prepare(req)
            problems = flow.preflight(plan)
            blast = self._blast_radius(flow, plan)
        except DcbError as e:
            self.post_message(Prepared(None, [], blast, e))
            return
        except Exception as e:
            self.post_message(Prepared(None, [], blast, DcbError(f"{type(e).__name__}: {e}")))
            return
        self.post_message(Prepared(plan, problems, blast, None))

    def _blast_radius(self, flow: RestoreFlow, plan: RestorePlan) -> BlastRadius:
        b = BlastRadius()
        gw = flow.gw
        sizes = gw.volume_sizes()
        for a in plan.volumes:
            name = flow.target.volumes[a.name]
            users = [c.name for c in gw.containers_using_volume(name)]
            b.volumes.append(
                f"volume [b]{name}[/]: now {fmt.size(sizes.get(name))}, used by "
                f"{', '.join(users) or 'no container'} → replaced by "
                f"{fmt.size(a.source.get('raw_bytes'))} from the backup")
        if plan.databases:
            pg = flow.pg
            try:
                live_sizes = pg.database_sizes()
                conns = dict(
                    line.split("|") for line in pg.query(
                        "SELECT datname || '|' || count(*) FROM pg_stat_activity "
                        "WHERE datname IS NOT NULL GROUP BY datname").splitlines() if "|" in line)
            except DcbError:
                live_sizes, conns = {}, {}
            for a in plan.databases:
                rows = sum((a.source.get("row_counts") or {}).values())
                b.databases.append(
                    f"database [b]{a.name}[/]: now {fmt.size(live_sizes.get(a.name))}, "
                    f"{conns.get(a.name, '0')} live connections → replaced by the backup's "
                    f"{fmt.size(a.size_bytes)} dump" + (f" ({rows:,} rows)" if rows else ""))
        return b

    @on(ServiceEvent)
    def _service_event(self, msg: ServiceEvent) -> None:
        panel_id = "#run-panel" if msg.source == "run" else "#checks-panel"
        self.query_one(panel_id, ProgressPanel).handle(msg.event)
        if msg.source == "run" and isinstance(msg.event, StageStarted | StageFinished
                                              | StageFailed):
            self._render_run_steps(msg.event)

    @on(Prepared)
    def _prepared(self, msg: Prepared) -> None:
        checklist = self.query_one("#checklist", Static)
        if msg.error is not None or msg.plan is None:
            err = msg.error.message if msg.error else "unknown error"
            checklist.update(f"[b red]✗ {err}[/]\n"
                             + (msg.error.hint if msg.error and msg.error.hint else "")
                             + "\n\nNothing was changed. Escape goes back.")
            checklist.add_class("failed")
            return
        self.plan = msg.plan
        n = len(msg.plan.databases) + len(msg.plan.volumes)
        lines = [f"[green]✓[/] checksums of {n} artifact(s) match the manifest"
                 if not msg.plan.set.legacy else "[yellow]![/] legacy set: no checksums",
                 "[green]✓[/] every archive and dump read through",
                 "[green]✓[/] Docker reachable"]
        if msg.problems:
            lines += [f"[b red]✗ {p}[/]" for p in msg.problems]
            lines.append("\nNothing was changed. Escape goes back.")
        else:
            lines += ["[green]✓[/] free space, server version, containers"]
        lines += [f"[yellow]![/] {n}" for n in msg.plan.notes]
        checklist.update("\n".join(lines))
        self._blast = msg.blast
        self.query_one("#checks-next", Button).disabled = bool(msg.problems)
        if not msg.problems:
            self.query_one("#checks-next", Button).focus()

    @on(Button.Pressed, "#checks-back")
    def _checks_back(self) -> None:
        self.action_back()

    # -- step 3: plan and confirmation ------------------------------------------------------
    @on(Button.Pressed, "#checks-next")
    def _checks_next(self) -> None:
        plan = self.plan
        assert plan is not None
        steps = "\n".join(f"  {i:2}. {s.title}  [dim](~{fmt.duration(s.estimate_seconds)})[/]"
                          for i, s in enumerate(plan.steps, 1))
        self.query_one("#plan-text", Static).update(
            f"[b]Plan[/] (estimated {fmt.duration(plan.estimate_seconds)})\n{steps}")
        blast = getattr(self, "_blast", BlastRadius())
        stops = ", ".join(plan.stop_containers) or "nothing"
        self.query_one("#blast", Static).update(
            "[b]What will change[/]\n" + "\n".join(
                [f"  {line}" for line in (*blast.volumes, *blast.databases)]
                + [f"  containers stopped and started again: {stops}"]
                + (["  [b]PostgreSQL is stopped[/] (its data volume is replaced)"]
                   if plan.stops_postgres else [])))
        self.query_one("#confirm-label", Label).update(
            f"Type [b]{plan.confirm_token}[/] to confirm:")
        self.query_one("#confirm-input", Input).value = ""
        self.query_one("#confirm-go", Button).disabled = True
        self._show("confirm")
        self.query_one("#confirm-input", Input).focus()

    @on(Input.Changed, "#confirm-input")
    def _typed(self, event: Input.Changed) -> None:
        ok = self.plan is not None and event.value.strip() == self.plan.confirm_token
        self.query_one("#confirm-go", Button).disabled = not ok

    @on(Input.Submitted, "#confirm-input")
    def _typed_enter(self) -> None:
        if not self.query_one("#confirm-go", Button).disabled:
            self._go()

    @on(Button.Pressed, "#confirm-back")
    def _confirm_back(self) -> None:
        self.action_back()

    @on(Button.Pressed, "#confirm-go")
    def _go(self) -> None:
        plan = self.plan
        assert plan is not None
        token = self.query_one("#confirm-input", Input).value.strip()
        safety = self.query_one("#safety", Switch).value
        if safety != plan.safety_backup:
            plan = RestoreFlow(self.cfg).replan(plan, safety)
            self.plan = plan
        self._show("run")
        self.running = True
        self._render_run_steps(None)
        self.execute(plan, token)

    # -- step 4: execution -----------------------------------------------------------------
    @work(thread=True, exclusive=True, group="restore-execute", exit_on_error=False)
    def execute(self, plan: RestorePlan, token: str) -> None:
        flow = RestoreFlow(self.cfg, self.reporter, self.cancel)
        try:
            report = flow.execute(plan, token)
        except DcbError as e:
            self.post_message(Executed(None, e))
            return
        except Exception as e:
            self.post_message(Executed(None, DcbError(f"{type(e).__name__}: {e}")))
            return
        self.post_message(Executed(report, None))

    def _render_run_steps(self, event: Any) -> None:
        plan = self.plan
        if plan is None:
            return
        if not hasattr(self, "_step_state"):
            self._step_state: dict[str, str] = {}
        if isinstance(event, StageStarted):
            self._step_state[event.stage] = "running"
        elif isinstance(event, StageFinished):
            self._step_state[event.stage] = "done"
        elif isinstance(event, StageFailed):
            self._step_state[event.stage] = "failed"
        lines = []
        for s in plan.steps:
            st = self._step_state.get(s.title, "")
            mark = {"running": "[reverse b] ▶ ", "done": "[green] ✓ ",
                    "failed": "[b red] ✗ "}.get(st, "[dim]   ")
            lines.append(f"{mark}{s.title}[/]")
        self.query_one("#run-steps", Static).update("\n".join(lines))

    @on(Executed)
    def _executed(self, msg: Executed) -> None:
        self.running = False
        self.report = msg.report
        text = self.query_one("#result-text", Static)
        r = msg.report
        if r is None:
            err = msg.error
            text.update(f"[b red]✗ restore did not start: {err.message if err else '?'}[/]"
                        + (f"\n{err.hint}" if err and err.hint else ""))
        else:
            head = ("[b green]✓ Restore complete and verified[/]" if r.ok
                    else f"[b red]✗ Restore FAILED[/]: {r.error}")
            lines = [head, f"took {fmt.duration(r.seconds)}", ""]
            for what, diffs in r.verification.items():
                lines.append(f"  {what}: " + ("[green]equal to the backup[/]" if not diffs
                                               else "[red]" + "; ".join(diffs[:5]) + "[/]"))
            lines += [f"  state: {s}" for s in r.state]
            if r.safety_set_id:
                lines.append(f"\nsafety snapshot: [b]{r.safety_set_id}[/] "
                             "(u or the Undo button restores it)")
            lines.append(f"incident log: dcb history --restore {r.restore_id}")
            text.update("\n".join(lines))
        self.query_one("#result-undo", Button).display = bool(r and r.safety_set_id)
        self._show("result")
        self.query_one("#result-close", Button).focus()

    # -- step 5: result --------------------------------------------------------------------
    @on(Button.Pressed, "#result-close")
    def _close(self) -> None:
        self.dismiss(self.report)

    @on(Button.Pressed, "#result-undo")
    def _undo_pressed(self) -> None:
        self.action_undo()

    def action_undo(self) -> None:
        if self.report is None or not self.report.safety_set_id:
            return
        safety = self.report.safety_set_id
        self.dismiss(self.report)
        self.app.push_screen(RestoreWizard(self.cfg, safety))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "undo":
            return self.step == "result" and bool(self.report and self.report.safety_set_id)
        return True

    def action_back(self) -> None:
        if self.step == "scope":
            self.dismiss(None)
        elif self.step == "checks":
            self.cancel.set()
            self.cancel = threading.Event()
            self._show("scope")
        elif self.step == "confirm":
            self._show("checks")
        elif self.step == "run" and self.running:
            self._ask_cancel()
        else:
            self.dismiss(self.report)

    def _ask_cancel(self) -> None:
        def decided(yes: bool | None) -> None:
            if yes:
                self.cancel.set()
                self.query_one("#run-panel", ProgressPanel).log_line(
                    "[yellow]cancel requested: stopping at the next safe point[/]")

        self.app.push_screen(ConfirmScreen(
            "Cancel the restore?\n\nThe step in progress finishes first (a database is "
            "swapped in only when complete, a volume being replaced may be partly written). "
            "Stopped containers are started again, and the report says what state each "
            "database and volume is in. The safety snapshot, if taken, undoes everything.",
            yes="Cancel restore", no="Keep going", danger=True), decided)
