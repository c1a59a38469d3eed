"""Panes of the dashboard: containers, volumes, disk."""

from __future__ import annotations

from textual.widgets import DataTable, Static

from services import formatting as fmt
from services.status import StackStatus


class ContainersPane(DataTable[str]):
    def on_mount(self) -> None:
        self.border_title = "Containers"
        self.cursor_type = "row"
        self.add_columns("Container", "Role", "State", "Health", "Image", "Uptime")

    def show(self, st: StackStatus) -> None:
        self.clear()
        for c in st.containers:
            if c.info is None:
                self.add_row(c.name, c.role, "[b red]missing[/]", "-", "-", "-", key=c.name)
                continue
            colour = "green" if c.info.running else "red"
            self.add_row(c.name, c.role, f"[{colour}]{c.info.state}[/]", c.info.health or "-",
                         c.info.image, fmt.uptime(c.info.uptime_seconds(st.collected_at)),
                         key=c.name)


class VolumesPane(DataTable[str]):
    def on_mount(self) -> None:
        self.border_title = "Volumes"
        self.cursor_type = "row"
        self.add_columns("Volume", "Size", "Used by")

    def show(self, st: StackStatus) -> None:
        self.clear()
        for v in st.volumes:
            size = fmt.size(v.size_bytes) if v.exists else "[b red]missing[/]"
            self.add_row(v.name, size, ", ".join(v.used_by) or "-", key=v.name)


class DiskPane(Static):
    def on_mount(self) -> None:
        self.border_title = "Backup disk"

    def show(self, st: StackStatus) -> None:
        d = st.disk
        used_frac = d.used_bytes / d.total_bytes if d.total_bytes else 0
        width = 30
        filled = round(used_frac * width)
        colour = "red" if d.free_percent < 10 else "green"
        bar = f"[{colour}]{'█' * filled}[/]{'░' * (width - filled)}"
        b = st.backups
        backups = ("no backups yet" if b.count == 0
                   else f"{b.count} sets, newest {b.newest_id} ({fmt.age(b.newest_created_at)})")
        self.update(
            f"{st.backup_dir}\n{bar} {fmt.size(d.used_bytes)} used, "
            f"{fmt.size(d.free_bytes)} free of {fmt.size(d.total_bytes)}\nBackups: {backups}"
        )
