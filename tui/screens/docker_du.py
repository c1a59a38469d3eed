"""Dialogs of the Docker view: an item's details, and a cleanup's preview, type-to-confirm,
progress and result.

The cleanup screen holds the plan it shows and executes exactly that plan (the service checks
every item against the engine again and refuses if one changed); the confirm button stays
disabled until the plan's token is typed, and Cancel has the focus when there is nothing to
type.
"""

from __future__ import annotations

import threading
from typing import Protocol

from rich.markup import escape
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from dcb.services import formatting as fmt
from dcb.services.docker_df import (
    KIND_WORDS,
    CleanupPlan,
    CleanupResult,
    DockerItem,
    ItemCallback,
)
from dcb.services.errors import DcbError
from dcb.widgets.line_list import LineList, LineRow

NOT_OFFERED_SHOWN = 4
"""Lines of "not offered" items a preview shows (then a count of the rest)."""


class CleanupRunner(Protocol):
    def run_cleanup(self, plan: CleanupPlan, confirm: str, on_item: ItemCallback | None = None,
                    cancel: threading.Event | None = None) -> CleanupResult: ...


class DockerItemScreen(ModalScreen[None]):
    """Everything dcb knows about one item (the details behind a row of the Docker view)."""

    DEFAULT_CSS = """
    DockerItemScreen { align: center middle; }
    DockerItemScreen > #item-dialog {
        width: 100; max-width: 95%; height: auto; max-height: 95%;
        border: thick $primary; background: $surface; padding: 0 1;
    }
    DockerItemScreen #item-facts { height: auto; max-height: 80vh; }
    """
    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close", id="docker.item-close")]

    def __init__(self, item: DockerItem) -> None:
        super().__init__()
        self.item = item

    def compose(self) -> ComposeResult:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for label, value in self.item.facts():
            grid.add_row(Text(label), Text(value))
        with Vertical(id="item-dialog"):
            yield Label(Text.assemble((KIND_WORDS[self.item.kind], "bold"), " ",
                                      self.item.name), id="item-title")
            with VerticalScroll(id="item-facts"):
                yield Static(grid, id="item-facts-text")

    @property
    def text(self) -> str:
        """The facts as shown (for tests)."""
        return "\n".join(f"{label}: {value}" for label, value in self.item.facts())


class CleanupProgressed(Message):
    def __init__(self, item: DockerItem, outcome: str) -> None:
        super().__init__()
        self.item = item
        self.outcome = outcome


class CleanupFinished(Message):
    def __init__(self, result: CleanupResult | None, error: DcbError | None) -> None:
        super().__init__()
        self.result = result
        self.error = error


class CleanupScreen(ModalScreen[CleanupResult | None]):
    """Preview of a plan (exactly what will be removed), type-to-confirm, run, result."""

    DEFAULT_CSS = """
    CleanupScreen { align: center middle; }
    CleanupScreen > #cleanup-dialog {
        width: 90; max-width: 95%; height: auto; max-height: 95%;
        border: thick $warning; background: $surface; padding: 0 1;
    }
    CleanupScreen #cleanup-items { height: auto; max-height: 35vh; }
    CleanupScreen #cleanup-head { height: 1; }
    CleanupScreen #cleanup-kept, CleanupScreen #cleanup-result { height: auto; }
    CleanupScreen #cleanup-result.error { color: $error; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cleanup.cancel")]

    def __init__(self, plan: CleanupPlan, runner: CleanupRunner) -> None:
        super().__init__()
        self.plan = plan
        self.runner = runner
        self.result: CleanupResult | None = None
        self.error: DcbError | None = None
        self.running = False
        self.cancel_event = threading.Event()
        self._outcomes: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        plan = self.plan
        with Vertical(id="cleanup-dialog"):
            yield Static(self._title(), id="cleanup-title")
            yield Static(Text(f" {'Size':>9}  {'Status':<10}  What", style="bold"),
                         id="cleanup-head")
            yield LineList(id="cleanup-items")
            yield Static(self._not_offered(), id="cleanup-kept")
            if plan.items:
                yield Label(f"Type [b]{escape(plan.confirm_token)}[/] to {plan.verb()} "
                            "exactly these:",
                            id="cleanup-label")
                yield Input(placeholder="type it here", id="cleanup-input")
            yield Static("", id="cleanup-result")
            with Horizontal(classes="buttons"):
                yield Button("Cancel" if plan.items else "Close", id="cleanup-cancel",
                             variant="primary")
                if plan.items:
                    yield Button(plan.verb().capitalize(), id="cleanup-go", variant="error",
                                 disabled=True)

    def _title(self) -> str:
        p = self.plan
        if not p.items:
            return f"[b]{p.title}[/]: nothing to do."
        n = len(p.items)
        what = ("one log," if p.verb() == "truncate"
                else f"{n} {'item' if n == 1 else 'items'},")
        extra = ("\nThe container keeps running; Docker goes on appending to the file."
                 if p.verb() == "truncate" else
                 "\nOne by one, never forced; volumes are kept. If anything changed since "
                 "this preview, nothing is done.")
        return (f"[b]{p.title}[/]: {what} {fmt.size(p.total_bytes)} to free{extra}")

    def _not_offered(self) -> str:
        kept = self.plan.not_offered
        if not kept:
            return ""
        lines = [f"  {escape(name)}: {escape(why)}" for name, why in kept[:NOT_OFFERED_SHOWN]]
        if len(kept) > NOT_OFFERED_SHOWN:
            lines.append(f"  ... and {len(kept) - NOT_OFFERED_SHOWN} more")
        return "[b]Not offered[/]\n" + "\n".join(lines)

    def on_mount(self) -> None:
        self.query_one("#cleanup-kept").display = bool(self.plan.not_offered)
        self.query_one("#cleanup-result").display = False
        self.query_one(LineList).set_rows([self._row(i, "") for i in self.plan.items])
        if self.plan.items:
            self.query_one("#cleanup-input", Input).focus()
        else:
            self.query_one("#cleanup-cancel", Button).focus()

    @staticmethod
    def _row(item: DockerItem, outcome: str) -> LineRow:
        text = Text(f" {fmt.size(item.reclaimable_bytes):>9}  {item.status or '-':<10}  ")
        text.append(item.label)
        if outcome:
            text.append(f"  {outcome}", style="green" if outcome == "done" else "bold red")
        return LineRow(f"{item.kind}:{item.key}", text)

    @property
    def listed(self) -> list[str]:
        """The preview's rows, as labels (what the user sees, top to bottom)."""
        return [i.label for i in self.plan.items]

    @on(Input.Changed, "#cleanup-input")
    def _typed(self, event: Input.Changed) -> None:
        ok = event.value.strip() == self.plan.confirm_token and not self.running
        self.query_one("#cleanup-go", Button).disabled = not ok

    @on(Input.Submitted, "#cleanup-input")
    def _typed_enter(self) -> None:
        if not self.query_one("#cleanup-go", Button).disabled:
            self._go()

    @on(Button.Pressed, "#cleanup-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(Button.Pressed, "#cleanup-go")
    def _go(self) -> None:
        if self.running or self.result is not None:
            return
        token = self.query_one("#cleanup-input", Input).value.strip()
        self.running = True
        self.query_one("#cleanup-go", Button).disabled = True
        self.query_one("#cleanup-input", Input).disabled = True
        box = self.query_one("#cleanup-result", Static)
        box.update(f"{self.plan.verb()}...")
        box.display = True
        self.run(token)

    @work(thread=True, exclusive=True, group="docker-cleanup", exit_on_error=False)
    def run(self, token: str) -> None:
        def on_item(item: DockerItem, outcome: str) -> None:
            self.post_message(CleanupProgressed(item, outcome))

        try:
            result = self.runner.run_cleanup(self.plan, token, on_item, self.cancel_event)
        except DcbError as e:
            self.post_message(CleanupFinished(None, e))
            return
        self.post_message(CleanupFinished(result, None))

    @on(CleanupProgressed)
    def _progressed(self, msg: CleanupProgressed) -> None:
        key = f"{msg.item.kind}:{msg.item.key}"
        self._outcomes[key] = msg.outcome
        lines = self.query_one(LineList)
        index = next((n for n, r in enumerate(lines.rows) if r.key == key), None)
        if index is not None:
            lines.rows[index] = self._row(msg.item, msg.outcome)
            lines.cursor_row = index
            lines.refresh_line(index)

    @on(CleanupFinished)
    def _finished(self, msg: CleanupFinished) -> None:
        self.running = False
        self.result = msg.result
        self.error = msg.error
        box = self.query_one("#cleanup-result", Static)
        box.display = True
        if msg.error is not None:
            hint = f"\n{msg.error.hint}" if msg.error.hint else ""
            box.update(Text(msg.error.message + hint, style="bold red"))
        elif msg.result is not None:
            box.update(Text(msg.result.summary(),
                            style="green" if msg.result.ok else "bold red"))
        button = self.query_one("#cleanup-cancel", Button)
        button.label = "Close"
        button.focus()

    def action_cancel(self) -> None:
        if self.running:
            self.cancel_event.set()
            self.notify("stopping after the current item", severity="warning")
            return
        self.dismiss(self.result)
