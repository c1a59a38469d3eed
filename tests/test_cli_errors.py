"""The CLI's last resort: an exception no service translated (a bug) is one line on stderr
saying where its traceback was logged, exit 1; never a raw traceback."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import pytest

from dcb.cli import commands
from dcb.cli.main import main
from dcb.services.config import Config


def _run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str], list[Path]]:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    code = main(["status"])
    err = capsys.readouterr().err
    logs = sorted((tmp_path / "state" / "dcb" / "log").glob("crash-*.log"))
    return code, err.splitlines(), logs


def test_an_unexpected_exception_is_one_line_and_a_crash_log(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(args: argparse.Namespace, cfg: Config) -> int:
        raise KeyError("the_key_nobody_expected")

    monkeypatch.setattr(commands, "cmd_status", broken)
    code, lines, logs = _run(capsys, tmp_path, monkeypatch)
    assert code == 1
    assert lines[0] == "dcb: internal error: KeyError: 'the_key_nobody_expected'"
    assert len(lines) == 2 and lines[1].startswith("hint: the full traceback is in ")
    (log,) = logs
    assert str(log) in lines[1]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "Traceback" not in "\n".join(lines)
    assert "in broken" in text and "KeyError: 'the_key_nobody_expected'" in text


def test_an_untranslated_os_error_names_the_file(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(args: argparse.Namespace, cfg: Config) -> int:
        open(tmp_path / "missing" / "file")  # noqa: SIM115
        return 0

    monkeypatch.setattr(commands, "cmd_status", broken)
    code, lines, logs = _run(capsys, tmp_path, monkeypatch)
    assert code == 1
    assert lines[0] == f"dcb: {tmp_path / 'missing' / 'file'}: No such file or directory"
    assert len(logs) == 1 and str(logs[0]) in lines[1]


def test_a_crashed_thread_is_logged_not_dumped(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def worker() -> None:
        raise RuntimeError("worker fell over")

    def status(args: argparse.Namespace, cfg: Config) -> int:
        t = threading.Thread(target=worker, name="dcb-test-worker")
        t.start()
        t.join()
        return 0

    monkeypatch.setattr(commands, "cmd_status", status)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored after
    code, lines, logs = _run(capsys, tmp_path, monkeypatch)
    assert code == 0
    assert lines[0] == ("dcb: in dcb-test-worker: internal error: RuntimeError: "
                        "worker fell over")
    assert "Traceback" not in "\n".join(lines)
    assert len(logs) == 1 and "worker fell over" in logs[0].read_text()
