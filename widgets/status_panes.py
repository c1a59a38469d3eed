"""Panes of the dashboard: containers, disk, status line."""

from __future__ import annotations

from textual.widgets import DataTable, Static

from dcb.services import formatting as fmt
from dcb.services.disk import DiskUsage
from dcb.services.docker_gateway import ContainerInfo
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
        now = fmt.now()
        values = {
            "state": state_markup(info),
            "health": (info.health or "-") if info else "-",
            "image": info.image if info else "-",
            "uptime": fmt.uptime(info.uptime_seconds(now)) if info else "-",
        }
        for col, value in values.items():
            self.update_cell(name, col, value, update_width=True)

    def mark_unknown(self) -> None:
        for name in self.roles:
            self.update_cell(name, "state", "[dim]unknown[/]", update_width=True)


class DiskPane(Static):
    """Backup filesystem as a bar, the store's size by kind, each volume's size."""

    def on_mount(self) -> None:
        self.border_title = "Disk"

    def show(self, st: StackStatus | None, ov: StoreOverview | None,
             warn_percent: int, disk: DiskUsage | None = None) -> None:
        lines = []
        d = st.disk if st is not None else disk
        if d is not None:
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


class StatusLine(Static):
    """Last good backup's age, schedule, Docker connection state."""

    def show(self, ov: StoreOverview | None, docker_state: str,
             problems: tuple[str, ...] = ()) -> None:
        age = fmt.age(ov.last_good) if ov and ov.last_good else "never"
        colour = "green"
        if ov is None or ov.last_good is None or (
                fmt.now() - ov.last_good).total_seconds() > 36 * 3600:
            colour = "yellow"
        text = (f"docker: {docker_state}  │  last good backup: [{colour}]{age}[/]  │  "
                "no schedule")
        if problems:
            text += "\n" + "\n".join(f"[b red]⚠ {p}[/]" for p in problems)
        self.update(text)
