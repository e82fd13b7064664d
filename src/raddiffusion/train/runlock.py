"""The run-directory lock: one training process per run directory, and none kept out by a process that has died.

The lock is a POSIX record lock (``fcntl``) on ``RUN_DIR/.lock``, a file that names the holder's pid and host. A
record lock belongs to the process that took it: children forked after it (DataLoader workers, figure processes) do
not inherit it, and the kernel drops it the moment the holder ends, however it ends, SIGKILL from the OOM killer
included. So a job requeued at once resumes at once, even while the dead process's loader workers are still ending.

Record locks have one trap: closing *any* descriptor of the file in the holding process drops its lock. This
process therefore opens the lock file only through :class:`RunLock`, and refuses a second lock of a run directory
it already holds before opening the file again.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import sys
import time
from pathlib import Path

from . import distributed
from .distributed import Process
from ..results.runfiles import LOCK
from .runs import RunError

EXITED_HOLDER_WAIT_S = 30.0
"""How long a lock whose named holder has exited on this host is waited for (its last children ending)."""
RETRY_INTERVAL_S = 0.2
BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # file systems without record locks

_held_paths: set[Path] = set()  # lock files this process holds
_held_locks: list[RunLock] = []  # taken by lock_run in this process, released by @releases_run_lock


class RunLock:
    """An exclusive record lock on ``RUN_DIR/.lock``, held until :meth:`release` or the end of this process.

    A run directory the lock created and nothing else wrote to (a run refused before it started) is removed on
    release.
    """

    def __init__(self, path: Path, fd: int | None, created: bool = False):
        self.path, self.fd, self.created = path, fd, created
        self.key = path.resolve()

    @classmethod
    def take(cls, run_dir: Path, wait_for_exited: float = EXITED_HOLDER_WAIT_S) -> RunLock:
        """Lock ``run_dir`` (created if missing); RunError in one line when another live process holds it.

        When the lock file names a holder that has exited on this host and the lock is still taken, wait up to
        ``wait_for_exited`` seconds for it to come free (saying so once on stderr).
        """
        path = run_dir / LOCK
        if path.resolve() in _held_paths:  # opening and closing it again would drop the lock
            raise RunError(f"{run_dir} is already in use by this process; choose another --run")
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not _lock_when_free(fd, run_dir, wait_for_exited):
                print(f"note: {run_dir} cannot be locked (its file system has no record locks); make sure no other "
                      "process trains in it", file=sys.stderr)
                os.close(fd)
                return cls(path, None)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        lock = cls(path, fd, created)
        _held_paths.add(lock.key)
        return lock

    def release(self) -> None:
        """Drop the lock (the file is emptied: no stale pid for the next reader)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
            if self.created and [child.name for child in self.path.parent.iterdir()] == [LOCK]:
                self.path.unlink()  # still locked: nobody can have started in it meanwhile
                self.path.parent.rmdir()
        finally:
            _held_paths.discard(self.key)
            fcntl.lockf(fd, fcntl.LOCK_UN)
            os.close(fd)


def _lock_when_free(fd: int, run_dir: Path, wait_for_exited: float) -> bool:
    """Take the record lock on ``fd``: True once taken, False where the file system has none, RunError when a live
    process holds it (or a holder that has exited still does after ``wait_for_exited`` seconds)."""
    deadline = None
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in UNSUPPORTED:
                return False
            if exc.errno not in BUSY:
                raise
        holder = read_holder(run_dir)
        if holder is None or not _has_exited(*holder):
            raise RunError(busy_message(run_dir))
        if deadline is None:
            print(f"note: {run_dir}: the last holder, pid {holder[0]}, has exited; its workers are ending; retrying "
                  f"for up to {wait_for_exited:g} s", file=sys.stderr)
            deadline = time.monotonic() + wait_for_exited
        if time.monotonic() >= deadline:
            raise RunError(f"{run_dir} is still locked {wait_for_exited:g} s after its holder, pid {holder[0]}, "
                           f"exited; a process it left behind holds it (fuser {run_dir / LOCK} names it)")
        time.sleep(RETRY_INTERVAL_S)


def read_holder(run_dir: Path) -> tuple[int, str] | None:
    """(pid, host) named by ``run_dir``'s lock file, or None when it names none."""
    try:
        pid, host = (run_dir / LOCK).read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _has_exited(pid: int, host: str) -> bool:
    """Whether process ``pid`` of ``host`` is known to have ended (only a process of this host can be checked)."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def busy_message(run_dir: Path) -> str:
    holder = read_holder(run_dir)
    who = f"pid {holder[0]} on {holder[1]}" if holder else "another process"
    return (f"{run_dir} is in use by another raddiffusion process ({who}); wait for it to end (or stop it), "
            "or choose another --run")


def lock_run(run_dir: Path, process: Process) -> None:
    """The main process locks ``run_dir`` for the life of the run function (see :func:`releases_run_lock`);
    when another process holds it, every process of this job raises RunError."""
    refusal = None
    if process.is_main:
        try:
            _held_locks.append(RunLock.take(run_dir))
        except RunError as exc:
            refusal = str(exc)
    if distributed.global_any(refusal is not None, process):
        raise RunError(refusal or busy_message(run_dir))


def releases_run_lock(run):
    """Decorator of a run function (which calls :func:`lock_run`): the locks it took are released when it
    returns or raises, so that a later run in the same process may use the run directory."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        held = len(_held_locks)
        try:
            return run(*args, **kwargs)
        finally:
            while len(_held_locks) > held:
                _held_locks.pop().release()

    return wrapper
