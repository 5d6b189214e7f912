"""The run directory on shared file systems: permissions, locks between processes, and work never deleted unasked."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading

import pytest

from distill.run_dir import RunDir, lock_kind, run_lock, write_json, write_text


def test_outputs_follow_the_umask_so_teammates_can_read_them(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.md", "hello\n")
        write_json(tmp_path / "sub" / "report.json", {"a": 1})
        os.umask(0o007)
        write_text(tmp_path / "group.md", "team\n")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "sub" / "report.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "group.md").stat().st_mode & 0o777 == 0o660
    assert (tmp_path / "report.md").read_text() == "hello\n"
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left beside the outputs


HOLD = """
import sys, time
from distill.run_dir import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_in_other_process(lock, seconds: float, env=None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_run_lock_excludes_another_process(tmp_path):
    from filelock import Timeout

    assert lock_kind(tmp_path) == ("flock", None)  # this machine's file systems support flock
    lock = tmp_path / ".generate.lock"
    holder = _hold_in_other_process(lock, 3)
    with pytest.raises(Timeout):
        with run_lock(lock, timeout=0.5):
            pass
    holder.wait(timeout=60)
    with run_lock(lock, timeout=5):  # released when its holder finished
        pass


def test_without_flock_the_lock_falls_back_to_lock_files_and_says_so(tmp_path, monkeypatch, capsys):
    import fcntl

    def no_flock(fd, op):  # a file system mounted without flock support answers like this
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    kind, why = lock_kind(tmp_path)
    assert kind == "soft" and "flock fails there" in why
    assert "warning:" in capsys.readouterr().out
    lock = tmp_path / ".generate.lock"
    with run_lock(lock):
        assert (tmp_path / ".generate.lock-soft").is_file()  # the lock is the file's existence
        taken = []
        other = threading.Thread(target=lambda: taken.append(_try(lock)))
        other.start()
        other.join()
        assert taken == [False]  # not while it is held
    assert not (tmp_path / ".generate.lock-soft").exists()


def test_a_lock_file_left_by_a_killed_process_is_taken_over(tmp_path, monkeypatch):
    from filelock import Timeout

    monkeypatch.setenv("DISTILL_LOCK", "soft")  # the fallback, chosen by hand as on a mount flock cannot serve
    lock = tmp_path / ".generate.lock"
    holder = _hold_in_other_process(lock, 600, dict(os.environ))
    with pytest.raises(Timeout):  # another process's lock file excludes this one while that process lives
        with run_lock(lock, timeout=0.5):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert (tmp_path / ".generate.lock-soft").is_file()  # SIGKILL leaves the file behind
    with run_lock(lock, timeout=10):  # its holder is gone on this host: taken over, not waited on for ever
        pass


def _try(lock) -> bool:
    from filelock import Timeout

    try:
        with run_lock(lock, timeout=0.3):
            return True
    except Timeout:
        return False


def test_a_changed_fingerprint_moves_earlier_work_aside_instead_of_deleting_it(tmp_path):
    from distill.pipeline import begin_stage

    run = RunDir(tmp_path / "runs" / "x")
    assert begin_stage(run, "train", "fp-a", force=False) is None
    checkpoint = run.stage("train") / "checkpoint-10" / "adapter_model.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")

    assert begin_stage(run, "train", "fp-a", force=False) is None  # same settings: partial work resumes in place
    assert checkpoint.read_bytes() == b"weights"

    moved = begin_stage(run, "train", "fp-b", force=False)  # settings changed: the old work is kept aside
    assert moved is not None and moved.parent == run.root / ".stale" and moved.name.startswith("train-")
    assert (moved / "checkpoint-10" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not checkpoint.exists() and run.stage("train").is_dir()
    assert run.stale_folders() == [moved]

    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"newer")
    second = begin_stage(run, "train", "fp-c", force=False)  # a second change within the same second: its own folder
    assert second != moved and (second / "checkpoint-10" / "adapter_model.safetensors").read_bytes() == b"newer"

    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"forced")
    assert begin_stage(run, "train", "fp-c", force=True) is None  # --force: redo, and the old work is deleted
    assert not checkpoint.exists() and run.stale_folders() == [moved, second]
