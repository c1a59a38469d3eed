"""Panes of the dashboard: containers, disk, status line."""

from __future__ import annotations

from datetime import timedelta

from rich.markup import escape
from textual.widgets import DataTable, Static

from dcb.services import formatting as fmt
from dcb.services.disk import DiskUsage
from dcb.services.disk_picture import BACKUPS, DiskPicture
from dcb.services.docker_gateway import ContainerInfo
from dcb.services.ops.check import CRITICAL, NAMES, CheckReport
from dcb.services.ops.heartbeat import DaemonState
from dcb.services.overview import StoreOverview
from dcb.services.status import StackStatus


def state_markup(info: ContainerInfo | None) -> str:
    if info is None:
        return "[b red]missing[/]"
    colour = "green" if info.running else "red"
    if info.health == "unhealthy":
        colour = "red"
    return f"[{colour}]{info.state}[/]"


class ContainersPane(DataTable[str]):
    """Stack containers; rows are updated one by one from Docker's event stream."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.roles: dict[str, str] = {}
        self._infos: dict[str, ContainerInfo | None] = {}
        self._as_of: dict[str, float] = {}
        """When each row's data was observed (monotonic): older data never overwrites it."""

    def on_mount(self) -> None:
        self.border_title = "Containers"
        self.add_column("Container", key="name")
        self.add_column("Role", key="role")
        self.add_column("State", key="state")
        self.add_column("Health", key="health")
        self.add_column("Image", key="image")
        self.add_column("Uptime", key="uptime")

    def set_roles(self, roles: dict[str, str]) -> None:
        self.roles = roles
        self.clear()
        for name, role in roles.items():
            self.add_row(name, role, "…", "-", "-", "-", key=name)

    def show(self, st: StackStatus, as_of: float) -> None:
        for c in st.containers:
            self.update_container(c.name, c.info, as_of)

    def update_container(self, name: str, info: ContainerInfo | None, as_of: float) -> None:
        if name not in self.roles or as_of < self._as_of.get(name, float("-inf")):
            return
        self._as_of[name] = as_of
        self._infos[name] = info
        now = fmt.now()
        values = {
            "state": state_markup(info),
            "health": (info.health or "-") if info else "-",
            "image": info.image if info else "-",
            "uptime": fmt.uptime(info.uptime_seconds(now)) if info else "-",
        }
        for col, value in values.items():
            self.update_cell(name, col, value, update_width=True)

    def refresh_uptimes(self) -> None:
        now = fmt.now()
        for name, info in self._infos.items():
            if info is not None:
                self.update_cell(name, "uptime", fmt.uptime(info.uptime_seconds(now)),
                                 update_width=True)

    def mark_unknown(self) -> None:
        for name in self.roles:
            self.update_cell(name, "state", "[dim]unknown[/]", update_width=True)


class DiskPane(Static):
    """Every filesystem that matters (backup dir, Docker's data root, volumes; one line pair
    per device) with its free space, the top offenders, the store's size by kind, each
    volume's size. Until the first disk picture arrives: the backup filesystem alone."""

    def on_mount(self) -> None:
        self.border_title = "Disk"

    def show(self, st: StackStatus | None, ov: StoreOverview | None,
             warn_percent: int, disk: DiskUsage | None = None,
             picture: DiskPicture | None = None) -> None:
        lines = []
        d = st.disk if st is not None else disk
        if picture is not None:
            lines += _picture_lines(picture, d, ov, warn_percent)
        elif d is not None:
            used_frac = d.used_bytes / d.total_bytes if d.total_bytes else 0
            width = 20
            filled = round(used_frac * width)
            low = d.free_percent < warn_percent
            colour = "red" if low else "green"
            bar = f"[{colour}]{'█' * filled}[/]{'░' * (width - filled)}"
            warn = " [b red]LOW[/]" if low else ""
            lines.append(f"{bar} {d.free_percent:.0f}% free{warn}")
            lines.append(f"{fmt.size(d.free_bytes)} free of {fmt.size(d.total_bytes)}")
        if ov is not None:
            kinds = ", ".join(f"{k} {fmt.size(v)}" for k, v in sorted(ov.bytes_by_kind.items()))
            lines.append(f"backups: {kinds or 'none yet'}")
        if st is not None:
            for v in st.volumes:
                size = fmt.size(v.size_bytes) if v.exists else "[b red]missing[/]"
                lines.append(f"volume {v.name}: {size}")
            for u in st.undo_points:
                colour = "yellow" if u.state in ("failed", "interrupted") else "cyan"
                until = (f", released {u.expires_at[:16].replace('T', ' ')}"
                         if u.expires_at and u.state == "verified" else "")
                lines.append(f"[{colour}]undo point {u.restore_id}[/]: holds "
                             f"{fmt.size(u.held_bytes)} ({u.state}{until}; `{u.command}`)")
        self.update("\n".join(lines) or "…")


def _picture_lines(p: DiskPicture, d: DiskUsage | None, ov: StoreOverview | None,
                   warn_percent: int) -> list[str]:
    lines = []
    for fs in p.filesystems:
        free, total = fs.free_bytes, fs.total_bytes
        if d is not None and BACKUPS in fs.holds:  # the status poll's numbers are fresher
            free, total = d.free_bytes, d.total_bytes
        pct = 100.0 * free / total if total else 0.0
        low = pct < warn_percent
        colour = "red" if low else "green"
        warn = " [b red]LOW[/]" if low else ""
        filled = round((1 - pct / 100) * 8)
        lines.append(f"[b]{pct:.0f}% free[/]{warn} {escape(fs.holds_text())}")
        lines.append(f"[{colour}]{'█' * filled}[/]{'░' * (8 - filled)} "
                     f"{fmt.size(free)} of {fmt.size(total)}")
    lines += [f"[dim]? {escape(u)}[/]" for u in p.unreachable]
    if p.docker_error:
        lines.append(f"[dim]docker: {escape(p.docker_error)}[/]")
    store = sum(ov.bytes_by_kind.values()) if ov is not None else None
    for n, o in enumerate(p.offenders(store)):
        lines.append(f"{'top' if n == 0 else '':<4}{fmt.size(o.size_bytes):>9} "
                     f"{escape(o.label)}")
    return lines


class StatusLine(Static):
    """Last good backup's age, schedule, Docker connection state."""

    def show(self, ov: StoreOverview | None, docker_state: str,
             problems: tuple[str, ...] = (), schedule: str = "no schedule") -> None:
        age = fmt.age(ov.last_good) if ov and ov.last_good else "never"
        colour = "green"
        if ov is None or ov.last_good is None or (
                fmt.now() - ov.last_good).total_seconds() > 36 * 3600:
            colour = "yellow"
        text = (f"docker: {docker_state}  │  last good backup: [{colour}]{age}[/]  │  "
                f"{schedule}")
        if problems:
            text += "\n" + "\n".join(f"[b red]⚠ {p}[/]" for p in problems)
        self.update(text)


def schedule_markup(jobs: int, state: DaemonState | None, stale_minutes: float) -> str:
    """The status line's schedule part: the next run and whether the daemon is alive."""
    if jobs == 0:
        return "no schedule"
    if state is None:
        return "schedule: [b red]daemon not running[/]"
    now = fmt.now()
    alive = state.alive(now, timedelta(minutes=stale_minutes))
    nxt = state.next_run()
    if state.current_job and alive:
        what = f"running [b]{state.current_job}[/]"
    elif nxt is not None:
        what = f"next: {nxt[0]} {fmt.age(nxt[1], now)}"
    else:
        what = "no run planned"
    if alive:
        return f"{what} · daemon [green]alive[/]"
    seen = state.updated()
    return f"{what} · daemon [b red]down[/] (seen {fmt.age(seen, now)})"


class AlertBanner(Static):
    """``dcb check``'s warnings and criticals on the dashboard; hidden when all is OK."""

    def show(self, report: CheckReport | None) -> None:
        alerts = report.alerts if report is not None else ()
        self.display = bool(alerts)
        self.set_class(any(a.status == CRITICAL for a in alerts), "critical")
        self.update("\n".join(f"⚠ {NAMES[a.status]}: {a.message}" for a in alerts))
