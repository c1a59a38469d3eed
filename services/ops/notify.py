"""Notifications: apprise URLs (email over SMTP, JSON webhooks, Slack, ntfy, ...) and
healthchecks-style pings per scheduled job.

Every event goes to every target whose category it matches (``[notify] on``: ``failure``,
``recovery``, ``success``). A JSON webhook (``json://``/``jsons://``) gets apprise's payload
(title, message, type) plus the event's fields at the top level: ``event``, ``host``,
``set_id``, ``status``, durations, sizes, ``error``.

URLs carry secrets (tokens, passwords), so they come only from environment variables or a
0600 file, and no URL is ever logged: a target is named by its number and scheme, and
apprise's own messages are scrubbed of every part of the URL before they are logged. A failed
notification is logged and never fails the job that caused it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dcb.services.config import Config, JobConfig
from dcb.services.errors import ConfigError

# apprise logs through the "apprise" logger; without a handler Python's last-resort handler
# would print its warnings (which may hold a URL's host or path) to stderr. We capture them
# ourselves (apprise.LogCapture) and log a scrubbed line instead.
_apprise_log = logging.getLogger("apprise")
_apprise_log.addHandler(logging.NullHandler())
_apprise_log.propagate = False

Log = Callable[[str], None]

FAILURE_STATUSES = ("failed", "warning", "critical", "unknown")


@dataclass(frozen=True)
class Event:
    """What happened: a job's run, another process's run seen in the history, a check
    transition."""

    event: str
    """``backup``, ``prune``, ``verify``, ``drill``, ``replicate``, ``restore`` or ``check``."""
    status: str
    """``ok``, ``failed``, ``recovered`` (ok after a failure), or for checks ``warning``,
    ``critical``, ``unknown``."""
    host: str
    message: str
    """One human line: what happened."""
    job: str | None = None
    set_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None
    size_bytes: int | None = None
    error: str | None = None
    durations: dict[str, float] = field(default_factory=dict)
    """Per artifact (``database dart_cloud``...): seconds."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Per artifact: bytes."""

    @property
    def category(self) -> str:
        if self.status in FAILURE_STATUSES:
            return "failure"
        if self.status == "recovered":
            return "recovery"
        return "success"

    @property
    def title(self) -> str:
        what = self.job or self.event
        word = {"ok": "ok", "recovered": "back to OK", "failed": "FAILED",
                "warning": "WARNING", "critical": "CRITICAL", "unknown": "UNKNOWN"}
        return f"dcb on {self.host}: {what} {word.get(self.status, self.status)}"

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "status": self.status, "host": self.host,
                "job": self.job, "set_id": self.set_id, "started_at": self.started_at,
                "finished_at": self.finished_at, "duration_seconds": self.duration_seconds,
                "size_bytes": self.size_bytes, "error": self.error,
                "durations": dict(self.durations), "sizes": dict(self.sizes),
                "summary": self.message}

    def body(self) -> str:
        lines = [self.message]
        if self.set_id:
            lines.append(f"set: {self.set_id}")
        if self.duration_seconds is not None:
            lines.append(f"duration: {self.duration_seconds:.1f}s")
        if self.size_bytes is not None:
            lines.append(f"size: {self.size_bytes} bytes")
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines)


def host_name(cfg: Config) -> str:
    return cfg.notify.host or socket.gethostname()


def _split_urls(text: str) -> list[str]:
    out: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        out.extend(u for u in re.split(r"[\s,]+", line.strip()) if u)
    return out


def notify_urls(cfg: Config, environ: dict[str, str] | None = None) -> list[str]:
    """Every configured apprise URL, from ``[notify] urls_env`` and ``urls_file``."""
    env = os.environ if environ is None else environ
    urls: list[str] = []
    for name in cfg.notify.urls_env:
        urls.extend(_split_urls(env.get(name, "")))
    if cfg.notify.urls_file:
        urls.extend(_split_urls(cfg.secret_file(cfg.notify.urls_file, "[notify] urls_file")))
    return urls


def ping_url(cfg: Config, name: str, job: JobConfig,
             environ: dict[str, str] | None = None) -> str | None:
    """The job's healthchecks-style ping URL (``ping_url_env`` or ``ping_url_file``)."""
    env = os.environ if environ is None else environ
    if job.ping_url_env:
        value = env.get(job.ping_url_env, "").strip()
        if value:
            return value
    if job.ping_url_file:
        urls = _split_urls(cfg.secret_file(job.ping_url_file,
                                           f"[schedule.{name}] ping_url_file"))
        if urls:
            return urls[0]
    return None


def scrub(text: str, urls: list[str]) -> str:
    """``text`` with every part of every URL (user, password, host, path, query values)
    replaced by ``***``."""
    parts: set[str] = set()
    for u in urls:
        try:
            sp = urlsplit(u)
        except ValueError:
            continue
        rest = u.split("://", 1)[-1]
        parts.update(p for p in re.split(r"[/:@?&=#,;]+", rest) if len(p) >= 3)
        if sp.hostname:
            parts.add(sp.hostname)
    for p in sorted(parts, key=len, reverse=True):
        text = text.replace(p, "***")
    return text


def target_label(index: int, url: str) -> str:
    """How a target is named in logs: its number and scheme, nothing secret."""
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return f"notification target #{index + 1} ({scheme})"


class Notifier:
    """Sends events to the configured targets and pings jobs' URLs; never raises."""

    def __init__(self, cfg: Config, log: Log, environ: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.urls = notify_urls(cfg, environ)
        self.on = set(cfg.notify.on)
        self.timeout = cfg.notify.timeout
        self._lock = threading.Lock()
        self._checked = False

    def wants(self, event: Event) -> bool:
        return bool(self.urls) and event.category in self.on

    def send(self, event: Event) -> int:
        """Deliver to every target; returns how many accepted it. Failures are logged."""
        if not self.wants(event):
            return 0
        import apprise  # imported here: a second or so that `dcb` without alerts never pays

        ok = 0
        with self._lock:
            for i, url in enumerate(self.urls):
                label = target_label(i, url)
                with apprise.LogCapture(level=logging.WARNING) as captured:
                    try:
                        plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
                        if not plugin:
                            self.log(f"{label}: not a valid apprise URL (skipped)")
                            continue
                        self._prepare(plugin, event)
                        notify_type = (apprise.NotifyType.FAILURE if event.category == "failure"
                                       else apprise.NotifyType.SUCCESS)
                        sent = plugin.notify(body=event.body(), title=event.title,
                                             notify_type=notify_type)
                    except Exception as e:  # a notifier must never fail the job
                        sent = False
                        self.log(f"{label}: {type(e).__name__}")
                    reason = " ".join(line.strip() for line in captured.getvalue().splitlines()
                                      if line.strip())
                if sent:
                    ok += 1
                else:
                    why = scrub(reason, self.urls)[:300] or "refused"
                    self.log(f"{label}: {event.event} {event.status} not delivered: {why}")
        return ok

    def _prepare(self, plugin: Any, event: Event) -> None:
        for attr in ("socket_connect_timeout", "socket_read_timeout"):
            if hasattr(plugin, attr):
                setattr(plugin, attr, self.timeout)
        extras = getattr(plugin, "payload_extras", None)
        if isinstance(extras, dict):  # json:// and jsons://: the event's fields, typed
            extras.update(event.to_json())

    def ping(self, url: str | None, phase: str, body: str = "", job: str = "") -> bool:
        """A healthchecks-style ping: ``start``, ``success`` or ``fail`` (body: the error)."""
        if not url:
            return False
        import requests

        suffix = {"start": "/start", "success": "", "fail": "/fail"}[phase]
        target = url.rstrip("/") + suffix
        try:
            r = requests.post(target, data=body.encode()[:100_000], timeout=self.timeout)
        except requests.RequestException as e:
            self.log(f"ping of job {job} ({phase}) failed: {type(e).__name__}")
            return False
        if not 200 <= r.status_code < 300:
            self.log(f"ping of job {job} ({phase}) failed: HTTP {r.status_code}")
            return False
        return True


def validate_notify(cfg: Config, environ: dict[str, str] | None = None) -> list[str]:
    """Problems with the notification setup (a ConfigError for an unreadable file)."""
    urls = notify_urls(cfg, environ)
    env = os.environ if environ is None else environ
    problems = [f"[notify] urls_env: ${n} is not set" for n in cfg.notify.urls_env
                if not env.get(n)]
    if not urls:
        return problems
    import apprise

    for i, u in enumerate(urls):
        if not apprise.Apprise.instantiate(u, suppress_exceptions=True):
            problems.append(f"{target_label(i, u)}: not a valid apprise URL")
    return problems


__all__ = ["ConfigError", "Event", "Notifier", "notify_urls", "ping_url", "scrub"]
