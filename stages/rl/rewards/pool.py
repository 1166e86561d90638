"""Batch scoring in worker processes with a hard per-item time limit.

Each worker scores one item at a time. Inside the worker `score_with` already interrupts a slow
verifier at time_limit_s (SIGALRM), and that worker is then replaced (the interrupted verifier may
have left its state half-built); a worker still busy at time_limit_s + kill_grace_s (stuck in C
code, or a verifier that blocks signals) is SIGKILLed and replaced, and its item gets reason
"timeout". A worker that dies (os._exit, segfault, out of memory) gives its item "verifier_crashed"
and is replaced. Neither stalls nor kills the caller. Workers start from a forkserver that has
imported this package, so a replacement costs a fork, not a re-import.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Mapping, Sequence

from trainer.lifetime import die_with_parent

from .config import RewardConfig
from .registry import Verifier, resolve_verifier
from .scoring import DEFAULT_CONFIG, score_with
from .types import RewardConfigError, RewardResult

_CONFIG_ERROR = "config_error:"


@dataclass(frozen=True)
class RewardItem:
    domain: str
    response: str
    ground_truth: Any
    info: Mapping[str, Any] = field(default_factory=dict)


def _worker_main(conn: Connection, config: RewardConfig) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides when workers stop
    die_with_parent()  # the forkserver (or a spawning caller) dies with the trainer: so does this worker
    if config.worker_memory_mb is not None:
        _cap_address_space(config.worker_memory_mb)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        task_id, verifier, item = message
        conn.send((task_id, _score_payload(verifier, item, config)))


def _cap_address_space(extra_mb: int) -> None:
    """Let this worker grow by extra_mb of address space beyond what it maps now (the parent's main
    module, e.g. a trainer that imported torch, is re-imported in each worker and may map gigabytes)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError):  # not Linux: no cap
        return
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = mapped + (extra_mb << 20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _score_payload(verifier: bytes, item: bytes, config: RewardConfig) -> RewardResult:
    try:
        domain, response, ground_truth, info = pickle.loads(item)
        return score_with(pickle.loads(verifier), domain, response, ground_truth, config, info)
    except RewardConfigError as err:
        return RewardResult(config.min_reward, False, None, f"{_CONFIG_ERROR}{err}")
    except Exception as err:  # unpickling or scoring bug: this item only
        return RewardResult(config.min_reward, False, None, f"verifier_error:{type(err).__name__}")


class _Worker:
    def __init__(self, ctx: Any, config: RewardConfig):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, config), daemon=True)
        self.process.start()
        child.close()

    def stop(self, kill: bool) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop(kill=False)
    workers.clear()


def cpus_per_rank() -> int:
    """This rank's share of the CPUs it may use, the node's ranks (torchrun's LOCAL_WORLD_SIZE)
    sharing them: a recipe's pool is at most this (eval_9b's 16 workers per rank took 34 s to start
    on a 2-core machine, for no faster scoring)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, usable // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


class RewardPool:
    """Reusable pool of scoring workers; use as a context manager or call close()."""

    def __init__(self, config: RewardConfig | None = None, num_workers: int | None = None):
        self.config = config or DEFAULT_CONFIG
        if num_workers is None:
            share = cpus_per_rank()
            num_workers = min(self.config.num_workers or share, share)
        if num_workers < 1:
            raise ValueError("RewardPool needs num_workers >= 1 (use score_batch(num_workers=0) to score inline)")
        self._ctx = multiprocessing.get_context(self.config.start_method)
        if self.config.start_method == "forkserver":
            self._ctx.set_forkserver_preload([__name__, f"{__package__}.warmup"])
        self._workers = [_Worker(self._ctx, self.config) for _ in range(num_workers)]
        self._close = weakref.finalize(self, _stop_all, self._workers)
        self.restarts = 0  # workers replaced after a timeout or a crash, over the pool's life

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _replace(self, worker: _Worker) -> _Worker:
        worker.stop(kill=True)
        fresh = _Worker(self._ctx, self.config)
        self._workers[self._workers.index(worker)] = fresh
        self.restarts += 1
        return fresh

    def _verifiers(self, items: Sequence[RewardItem]) -> dict[str, bytes]:
        """Each domain's verifier, resolved and pickled once (recipe errors raise here, before any work)."""
        out: dict[str, bytes] = {}
        for item in items:
            if not isinstance(item, RewardItem):
                raise TypeError(f"score_batch takes RewardItem objects, got {type(item).__name__}")
            if item.domain not in out:
                verifier: Verifier = resolve_verifier(item.domain, self.config)
                try:
                    out[item.domain] = pickle.dumps(verifier)
                except Exception as err:
                    raise RewardConfigError(
                        f"the verifier of domain {item.domain!r} cannot be sent to a worker ({err}); "
                        "define it at module level") from err
        return out

    def _payload(self, item: RewardItem) -> bytes | RewardResult:
        if not isinstance(item.response, str):
            return RewardResult(self.config.min_reward, False, None, f"bad_response_type:{type(item.response).__name__}")
        if len(item.response) > self.config.max_response_chars:  # never ship it to a worker
            return RewardResult(self.config.min_reward, False, None, "response_too_long")
        try:
            return pickle.dumps((item.domain, item.response, item.ground_truth, dict(item.info)))
        except Exception as err:
            return RewardResult(self.config.min_reward, False, None, f"bad_item:unpicklable({type(err).__name__})")

    def score_batch(self, items: Sequence[RewardItem]) -> list[RewardResult]:
        """Rewards in item order. Raises RewardConfigError for recipe errors (after the batch finishes
        when the error only shows inside a worker, e.g. an unconfigured judge)."""
        if not self._workers:
            raise RuntimeError("this RewardPool is closed")
        verifiers = self._verifiers(items)
        results: list[RewardResult | None] = [None] * len(items)
        busy: dict[_Worker, tuple[int, float]] = {}
        try:
            self._run(items, verifiers, results, busy)
        except BaseException:
            for worker in busy:  # they hold stale work: never reuse them
                self._replace(worker)
            raise
        for result in results:
            if result.reason.startswith(_CONFIG_ERROR):
                raise RewardConfigError(result.reason[len(_CONFIG_ERROR):])
        return results

    def _run(self, items: Sequence[RewardItem], verifiers: dict[str, bytes], results: list[RewardResult | None],
             busy: dict[_Worker, tuple[int, float]]) -> None:
        queue = deque(range(len(items)))
        resent: set[int] = set()
        idle = list(self._workers)
        hard_limit = self.config.time_limit_s + self.config.kill_grace_s
        while queue or busy:
            while queue and idle:
                index = queue.popleft()
                payload = self._payload(items[index])
                if isinstance(payload, RewardResult):
                    results[index] = payload
                    continue
                worker = idle.pop()
                try:
                    worker.conn.send((index, verifiers[items[index].domain], payload))
                except OSError:  # it died while idle: replace it and retry the item once
                    idle.append(self._replace(worker))
                    if index in resent:
                        results[index] = RewardResult(self.config.min_reward, False, None, "verifier_crashed")
                    else:
                        resent.add(index)
                        queue.appendleft(index)
                    continue
                busy[worker] = (index, time.monotonic() + hard_limit)
            if not busy:
                continue
            timeout = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
            now = time.monotonic()
            for worker, (index, deadline) in list(busy.items()):
                if worker.conn in ready or worker.process.sentinel in ready:
                    result, failure = self._receive(worker, index), "verifier_crashed"
                elif now >= deadline:
                    result, failure = None, "timeout"
                else:
                    continue
                del busy[worker]
                if result is None:  # it died, or it is stuck past the hard limit: a fresh worker takes its place
                    result = RewardResult(self.config.min_reward, False, None, failure)
                    worker = self._replace(worker)
                elif result.reason == "timeout":
                    # Its own time limit fired: an exception raised from a signal handler anywhere in
                    # sympy or a parser can leave their caches half-built, and later verdicts of that
                    # process wrong (measured: \infty^{\infty} scored "correct" against 1/2 after such
                    # a timeout). A fresh worker costs a fork.
                    worker = self._replace(worker)
                idle.append(worker)
                results[index] = result

    def _receive(self, worker: _Worker, index: int) -> RewardResult | None:
        """The worker's answer, or None when it died instead of answering."""
        try:
            if worker.conn.poll():
                task_id, result = worker.conn.recv()
                if task_id == index:
                    return result
        except (EOFError, OSError):
            pass
        return None


def score_batch(items: Sequence[RewardItem], config: RewardConfig | None = None,
                num_workers: int | None = None) -> list[RewardResult]:
    """Score a batch once. num_workers=0 scores inline in this process (no crash isolation; the time
    limit holds only in the main thread). Training loops should keep one RewardPool instead."""
    config = config or DEFAULT_CONFIG
    if (config.num_workers if num_workers is None else num_workers) == 0:
        return [score_with(resolve_verifier(it.domain, config), it.domain, it.response, it.ground_truth,
                           config, it.info) for it in items]
    with RewardPool(config, num_workers) as pool:  # None: the config's size (RewardPool)
        return pool.score_batch(items)
