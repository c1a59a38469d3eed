"""The restore wizard: scope -> checks -> plan and confirmation -> execution -> result.

A state machine over services.restore.RestoreFlow. The screen shows the plan the service made
(its checks, its steps, what will change) and hands the same plan back to be executed: no SQL
and no Docker calls here. Nothing changes before the user has typed the set id on the
confirmation step (the service itself refuses without that token). Escape goes back a step
before execution; during execution leaving needs an explicit cancel that says what state things
will be left in. The result step undoes the restore (``u``) through the same service as
``dcb undo``.

It flows by keyboard: Enter (or ``n``) is the current step's primary action and ``b``/Escape
goes back, wherever the focus is. Enter is a priority binding so a focused checkbox, switch or
scroll area cannot swallow it (space still toggles); a focused button or input keeps Enter for
itself, and on the confirmation step Enter runs the restore only when the typed id matches.
"""

from __future__ import annotations

import threading
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
from dcb.services.restore import (
    BlastRadius,
    RestoreFlow,
    RestorePlan,
    RestoreReport,
    RestoreRequest,
)
from dcb.services.store import BackupSet, BackupStore
from dcb.services.undo_flow import UndoResult, undo_restore
from dcb.tui.messages import ServiceEvent
from dcb.tui.screens.common import ConfirmScreen
from dcb.widgets.progress_panel import ProgressPanel

STEPS = ("scope", "checks", "confirm", "run", "result")


class Prepared(Message):
    def __init__(self, plan: RestorePlan | None, without_undo: RestorePlan | None,
                 problems: list[str], blast: BlastRadius | None, error: DcbError | None,
                 cancel: threading.Event | None = None) -> None:
        super().__init__()
        self.cancel = cancel
        """The run's cancel event: tells a current run from one the user left."""
        self.plan = plan
        self.without_undo = without_undo
        """The same plan with ``--no-safety-backup`` (the switch on the confirm step)."""
        self.problems = problems
        self.blast = blast
        self.error = error


class Undone(Message):
    def __init__(self, result: UndoResult | None, error: DcbError | None) -> None:
        super().__init__()
        self.result = result
        self.error = error


class Executed(Message):
    def __init__(self, report: RestoreReport | None, error: DcbError | None) -> None:
        super().__init__()
        self.report = report
        self.error = error


class RestoreWizard(Screen[RestoreReport | None]):
    AUTO_FOCUS = "#scope-next"
    BINDINGS = [
        Binding("enter", "next(True)", "Next", key_display="enter/n", priority=True,
                id="next"),
        Binding("n", "next", "Next", show=False),
        Binding("escape", "back", "Back", key_display="esc/b", id="back"),
        Binding("b", "back", "Back", show=False),
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
        self.plans: dict[bool, RestorePlan] = {}
        """The validated plan with (True) and without (False) its way back."""
        self.blast: BlastRadius | None = None
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
                    yield Label("Keep an undo point (what is replaced is kept, not copied: "
                                "undo in seconds)", id="safety-label")
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
                    yield Button("Undo this restore", id="result-undo")
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
        self.query_one("#scope-next", Button).focus()

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
        # With its way back; the confirm step's switch picks the plan without one.
        return RestoreRequest(set_id=self.set_id, databases=tuple(dbs), volumes=tuple(vols))

    @on(Button.Pressed, "#scope-next")
    def _scope_next(self) -> None:
        req = self._request()
        if not req.databases and not req.volumes:
            self.notify("choose at least one database or volume", severity="warning")
            return
        self._show("checks")
        self.plan = None
        self.plans = {}
        self.query_one("#checks-next", Button).disabled = True
        checklist = self.query_one("#checklist", Static)
        checklist.update("Checking the set and the stack…")
        checklist.remove_class("failed")
        # Nothing to press until the checks end: Enter says so instead of pressing Back.
        self.set_focus(None)
        self.prepare(req)

    @on(Button.Pressed, "#scope-cancel")
    def _scope_cancel(self) -> None:
        self.dismiss(None)

    # -- step 2: checks -------------------------------------------------------------------
    def reporter(self, e: Event) -> None:
        self.post_message(ServiceEvent(e, source=self.step))

    @work(thread=True, exclusive=True, group="restore-prepare", exit_on_error=False)
    def prepare(self, req: RestoreRequest) -> None:
        cancel = self.cancel
        flow = RestoreFlow(self.cfg, self.reporter, cancel)
        try:
            plan = flow.prepare(req)
            problems = flow.preflight(plan)
            blast = flow.blast_radius(plan)
            without = flow.replan(plan, safety_backup=False)
        except DcbError as e:
            self.post_message(Prepared(None, None, [], None, e, cancel))
            return
        except Exception as e:
            self.post_message(Prepared(None, None, [], None,
                                       DcbError(f"{type(e).__name__}: {e}"), cancel))
            return
        self.post_message(Prepared(plan, without, problems, blast, None, cancel))

    @on(ServiceEvent)
    def _service_event(self, msg: ServiceEvent) -> None:
        panel_id = "#run-panel" if msg.source == "run" else "#checks-panel"
        self.query_one(panel_id, ProgressPanel).handle(msg.event)
        if msg.source == "run" and isinstance(msg.event, StageStarted | StageFinished
                                              | StageFailed):
            self._render_run_steps(msg.event)

    @on(Prepared)
    def _prepared(self, msg: Prepared) -> None:
        if msg.cancel is not self.cancel or self.step != "checks":
            return  # a check run the user walked away from (b/Escape)
        checklist = self.query_one("#checklist", Static)
        if msg.error is not None or msg.plan is None:
            err = msg.error.message if msg.error else "unknown error"
            checklist.update(f"[b red]✗ {err}[/]\n"
                             + (msg.error.hint if msg.error and msg.error.hint else "")
                             + "\n\nNothing was changed. Escape goes back.")
            checklist.add_class("failed")
            self.query_one("#checks-back", Button).focus()
            return
        plan = msg.plan
        self.plan = plan
        self.plans = {True: plan, False: msg.without_undo or plan}
        self.blast = msg.blast
        checklist.update("\n".join(checklist_lines(plan, msg.problems)))
        self.query_one("#checks-next", Button).disabled = bool(msg.problems)
        self.query_one("#checks-back" if msg.problems else "#checks-next", Button).focus()

    @on(Button.Pressed, "#checks-back")
    def _checks_back(self) -> None:
        self.action_back()

    # -- step 3: plan and confirmation ------------------------------------------------------
    @on(Button.Pressed, "#checks-next")
    def _checks_next(self) -> None:
        plan = self.plan
        assert plan is not None
        switch = self.query_one("#safety", Switch)
        switch.value = plan.safety_backup
        switch.disabled = not self.plans[True].safety_backup
        self._render_plan()
        self.query_one("#confirm-label", Label).update(
            f"Type [b]{plan.confirm_token}[/] to confirm:")
        self.query_one("#confirm-input", Input).value = ""
        self.query_one("#confirm-go", Button).disabled = True
        self._show("confirm")
        self.query_one("#confirm-input", Input).focus()

    def _render_plan(self) -> None:
        plan = self.plan
        assert plan is not None
        steps = "\n".join(f"  {i:2}. {s.title}  [dim](~{fmt.duration(s.estimate_seconds)}"
                          f"{', ' + s.estimate_source if s.estimate_source else ''})[/]"
                          for i, s in enumerate(plan.steps, 1))
        self.query_one("#plan-text", Static).update(
            f"[b]Plan[/] (estimated {fmt.duration(plan.estimate_seconds)})\n{steps}")
        change = self.blast.lines() if self.blast is not None else []
        way_back = {"move": "an undo point keeps what is replaced (nothing copied)",
                    "safety": "a safety snapshot of what is replaced is taken first",
                    "none": "[b red]none: the replaced data is deleted[/]"}[plan.undo]
        self.query_one("#blast", Static).update(
            "[b]What will change[/]\n" + "\n".join(f"  {line}" for line in change)
            + f"\n  way back: {way_back}")

    @on(Switch.Changed, "#safety")
    def _safety_switched(self, event: Switch.Changed) -> None:
        if not self.plans or self.step != "confirm":
            return
        self.plan = self.plans[event.value]
        self._render_plan()

    @on(Input.Changed, "#confirm-input")
    def _typed(self, event: Input.Changed) -> None:
        ok = self.plan is not None and event.value.strip() == self.plan.confirm_token
        self.query_one("#confirm-go", Button).disabled = not ok

    @on(Input.Submitted, "#confirm-input")
    def _typed_enter(self) -> None:
        self._confirm_next()

    def _confirm_next(self) -> None:
        """Enter on the confirmation step: run only when the typed id matches."""
        if not self.query_one("#confirm-go", Button).disabled:
            self._go()
            return
        plan = self.plan
        field = self.query_one("#confirm-input", Input)
        if plan is not None:
            typed = field.value.strip()
            self.notify(f"type {plan.confirm_token} to confirm" if not typed else
                        f"{typed!r} is not the set id {plan.confirm_token}: nothing was done",
                        severity="warning")
        field.focus()

    @on(Button.Pressed, "#confirm-back")
    def _confirm_back(self) -> None:
        self.action_back()

    @on(Button.Pressed, "#confirm-go")
    def _go(self) -> None:
        plan = self.plan
        assert plan is not None
        token = self.query_one("#confirm-input", Input).value.strip()
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
            text.update("\n".join(result_lines(r)))
        self.query_one("#result-undo", Button).display = self._can_undo()
        self._show("result")
        self.query_one("#result-close", Button).focus()

    # -- step 5: result --------------------------------------------------------------------
    @on(Button.Pressed, "#result-close")
    def _close(self) -> None:
        self.dismiss(self.report)

    @on(Button.Pressed, "#result-undo")
    def _undo_pressed(self) -> None:
        self.action_undo()

    def _can_undo(self) -> bool:
        return self.report is not None and self.report.undo is not None and not self.running

    def action_undo(self) -> None:
        if not self._can_undo():
            return
        assert self.report is not None
        rid = self.report.restore_id

        def decided(yes: bool | None) -> None:
            if yes:
                self.running = True
                self.query_one("#result-undo", Button).display = False
                self.query_one("#result-text", Static).update(f"Undoing {rid}…")
                self.undo(rid)

        self.app.push_screen(ConfirmScreen(
            f"Undo restore {rid}?\n\nEverything it replaced is put back as it was just before "
            "the restore; whatever changed since is set aside (dropped at the next run).",
            yes="Undo the restore", no="Keep it", danger=True), decided)

    @work(thread=True, exclusive=True, group="restore-undo", exit_on_error=False)
    def undo(self, restore_id: str) -> None:
        try:
            result = undo_restore(self.cfg, restore_id, self.reporter, self.cancel)
        except DcbError as e:
            self.post_message(Undone(None, e))
            return
        except Exception as e:
            self.post_message(Undone(None, DcbError(f"{type(e).__name__}: {e}")))
            return
        self.post_message(Undone(result, None))

    @on(Undone)
    def _undone(self, msg: Undone) -> None:
        self.running = False
        text = self.query_one("#result-text", Static)
        if msg.result is None:
            err = msg.error
            text.update(f"[b red]✗ undo failed: {err.message if err else '?'}[/]"
                        + (f"\n{err.hint}" if err and err.hint else ""))
            self.query_one("#result-undo", Button).display = True
            return
        if self.report is not None:
            self.report.undo = None
        text.update("\n".join([f"[b green]✓ Restore {msg.result.restore_id} undone[/] in "
                                f"{fmt.duration(msg.result.seconds)}", "",
                                *[f"  {s}" for s in msg.result.steps]]))
        self.app.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "undo":
            return self.step == "result" and self._can_undo()
        if action == "next":
            if self.step == "run":
                return False
            if self.step == "checks" and self.query_one("#checks-next", Button).disabled:
                return None
        return True

    async def action_next(self, enter: bool = False) -> None:
        """The current step's primary action (Enter or ``n``), wherever the focus is. A
        focused button or input keeps Enter: the button is pressed, the input submits (the
        confirmation field's submit advances only when the typed id matches)."""
        focused = self.focused
        if enter and isinstance(focused, Button) and not focused.disabled:
            focused.press()
            return
        if enter and isinstance(focused, Input):
            await focused.action_submit()
            return
        if self.step == "scope":
            self._scope_next()
        elif self.step == "checks":
            if self.query_one("#checks-next", Button).disabled:
                done = self.plan is not None or \
                    self.query_one("#checklist", Static).has_class("failed")
                self.notify("the checks found problems: b or Escape goes back" if done
                            else "the checks are still running", severity="warning")
                return
            self._checks_next()
        elif self.step == "confirm":
            self._confirm_next()
        elif self.step == "result":
            self._close()

    def action_back(self) -> None:
        if self.step == "scope":
            self.dismiss(None)
        elif self.step == "checks":
            self.cancel.set()
            self.cancel = threading.Event()
            self._show("scope")
            self.query_one("#scope-next", Button).focus()
        elif self.step == "confirm":
            self._show("checks")
            self.query_one("#checks-next", Button).focus()
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
            "Cancel the restore?\n\nIt stops at the next safe point (a database is swapped in "
            "only when complete, a volume being replaced may be partly written). Stopped "
            "containers are started again, and the report says what state each database and "
            "volume is in. The undo point, if kept, undoes everything.",
            yes="Cancel restore", no="Keep going", danger=True), decided)


def checklist_lines(plan: RestorePlan, problems: list[str]) -> list[str]:
    """What validation checked, and what it could not (said, never ticked)."""
    lines = ["[green]✓[/] Docker reachable"]
    for c in plan.checks:
        label = c.detail if c.what == "checksums" else f"{c.what}: {c.detail}"
        lines.append(("[green]✓[/] " if c.ok else "[yellow]![/] ") + label)
    if plan.databases and (plan.starts_postgres or plan.stops_postgres):
        lines.append("[yellow]![/] server version not checked: PostgreSQL is not running "
                     "(pg_restore checks the dumps when it reads them)")
    if problems:
        lines += [f"[b red]✗ {p}[/]" for p in problems]
        lines.append("\nNothing was changed. Escape goes back.")
    else:
        lines.append("[green]✓[/] free space and containers")
    lines += [f"[yellow]![/] {n}" for n in plan.notes]
    return lines


def result_lines(r: RestoreReport) -> list[str]:
    if r.ok:
        head = "[b green]✓ Restore complete and verified[/]"
    elif r.cancelled:
        head = "[b yellow]Restore cancelled[/]"
    else:
        head = f"[b red]✗ Restore FAILED[/]: {r.error}"
    lines = [head, f"took {fmt.duration(r.seconds)}", ""]
    for what in sorted({*r.verification, *r.not_checked}):
        parts = []
        if what in r.verification:
            diffs = r.verification[what]
            how = ", ".join(r.checked.get(what) or [])
            parts.append(f"[green]equal to the backup[/]{f' ({how})' if how else ''}"
                         if not diffs else "[red]" + "; ".join(diffs[:5]) + "[/]")
        if r.not_checked.get(what):
            parts.append("[yellow]not checked: " + "; ".join(r.not_checked[what]) + "[/]")
        lines.append(f"  {what}: " + "; ".join(parts))
    lines += [f"  state: {s}" for s in r.state]
    lines += [f"  [yellow]note:[/] {n}" for n in r.notes]
    if r.undo:
        lines.append(f"\nundo: [b]{r.undo}[/] (u or the Undo button)")
    lines.append(f"incident log: dcb history --restore {r.restore_id}")
    return lines
