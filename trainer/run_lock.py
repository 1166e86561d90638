"""One live run per run directory: `<run_dir>/RUN_LOCK` names the owner (host, pid, start time).

A second run into a directory whose owner still lives stops at start with the owner's name; a lock
whose owner is gone (killed, node lost) is taken over. On the owner's host "alive" means the pid
exists and started when the lock says (pids are reused); from another host it means the owner
refreshed the lock's mtime within `STALE_S` (a heartbeat thread does it every `HEARTBEAT_S`).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

LOCK_NAME = "RUN_LOCK"
HEARTBEAT_S = 30.0  # the owner touches the lock this often
STALE_S = 180.0  # a lock from another host untouched this long has no live owner


class RunDirLocked(RuntimeError):
    pass


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start_ticks": _start_ticks(pid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def owner_alive(owner: dict[str, Any], lock: Path) -> bool:
    if owner.get("host") == socket.gethostname():
        ticks = _start_ticks(int(owner.get("pid", -1)))
        return ticks is not None and ticks == owner.get("start_ticks")
    try:
        return time.time() - lock.stat().st_mtime < STALE_S
    except FileNotFoundError:
        return False


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("host", "pid", "start_ticks"))


def _read(lock: Path) -> dict[str, Any] | None:
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: written by a process killed mid-write (we link complete files only)


class RunLock:
    """Held by rank 0 for the life of the process; released at exit."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.me = _identity()
        self._stop = threading.Event()

    def acquire(self) -> RunLock:
        tmp = self.path.with_name(f"{LOCK_NAME}.{self.me['pid']}.tmp")
        tmp.write_text(json.dumps(self.me))
        try:
            for _ in range(100):  # each pass either takes the lock or moves a dead owner's aside
                try:
                    os.link(tmp, self.path)  # atomic create-if-absent, also on NFS
                    break
                except FileExistsError:
                    pass
                owner = _read(self.path)
                if owner is None:
                    continue
                if _same(owner, self.me):  # this process took it already (a second stage in one process)
                    break
                if owner and owner_alive(owner, self.path):
                    raise RunDirLocked(
                        f"run directory {self.path.parent} is in use by a live run (host {owner.get('host')}, "
                        f"pid {owner.get('pid')}, started {owner.get('started')}). Wait for it to end or stop "
                        f"it, or pick another hydra.run.dir. If that run is gone, delete {self.path}.")
                try:  # the owner is gone: move its lock aside (one taker wins the rename), then retry
                    os.rename(self.path, self.path.with_name(f"{LOCK_NAME}.stale.{self.me['pid']}"))
                    os.unlink(self.path.with_name(f"{LOCK_NAME}.stale.{self.me['pid']}"))
                    self.previous = owner
                except FileNotFoundError:
                    pass
            else:
                raise RunDirLocked(f"could not take {self.path}")
        finally:
            tmp.unlink(missing_ok=True)
        atexit.register(self.release)
        threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True).start()
        return self

    previous: dict[str, Any] | None = None  # the dead owner whose lock was taken over, if any

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if _same(_read(self.path) or {}, self.me):
            self.path.unlink(missing_ok=True)
