"""Every process of a run dies with the process that started it, even on SIGKILL.

torchrun starts each worker in a session of its own, so a SIGKILL of the launcher (or of its
process group) leaves the workers training to the end; a SIGKILLed trainer likewise leaves its
vLLM engine core, DataLoader workers and reward workers running. Linux's PR_SET_PDEATHSIG makes the
kernel send a signal to a process when its parent exits, whatever killed the parent, so every link
of the chain sets it for its own parent:

    torchrun -> worker (trainer)        `adopt()` at start, when the parent is a torchrun agent
    trainer -> forked children          an at-fork hook `adopt()` installs (vLLM's engine core on
                                        CPU, DataLoader workers)
    trainer -> spawned children         `follow_parent()` when launch/common is imported again as
                                        the spawned child's main module (vLLM on GPU spawns)
    forkserver -> reward workers        the reward pool's worker entry; the forkserver itself exits
                                        when its parent does (stdlib)

A process started directly (`python launch/x.py`, srun) keeps its shell's semantics (nohup works).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1
# Set in the trainer's environment: its descendants that import launch/common know they are one.
OWNER_ENV = "PONDER_RUN_OWNER_PID"

_libc = None
_forking_from_main_thread = False
_hook_installed = False


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits. False where unsupported."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    if _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent died before the call: nobody will signal
        os.kill(os.getpid(), sig)
    return True


def under_torchrun() -> bool:
    """A torchrun (torch.distributed.elastic) agent started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def _before_fork() -> None:
    global _forking_from_main_thread
    _forking_from_main_thread = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    # PDEATHSIG follows the parent *thread*: a child forked by a short-lived thread would die with
    # that thread, so only children forked from the main thread get it.
    if _forking_from_main_thread:
        die_with_parent()


def adopt() -> None:
    """Called once by each trainer process at start: die with torchrun, and make this process's
    descendants die with it."""
    global _hook_installed
    if under_torchrun():
        die_with_parent()
    os.environ[OWNER_ENV] = str(os.getpid())
    if not _hook_installed:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _hook_installed = True


def follow_parent() -> None:
    """In a process that a trainer (or one of its descendants) spawned: die with the parent."""
    owner = os.environ.get(OWNER_ENV)
    if owner and owner != str(os.getpid()):
        die_with_parent()
