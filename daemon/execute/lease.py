"""A worker's hold on a plan while it runs it: who holds it, keeping the lease, and taking back at once what
a dead worker process of this machine held.

Each claim names its holder (``Holder``: this process, on this machine since its last boot, in this pid
namespace, plus an id of its own per claim) and lasts ``LEASE_SECONDS``. ``LeaseKeeper`` renews it while
the plan runs: at each step of the work (before each registry write) once ``LEASE_RENEW_SECONDS`` have
passed, and from a thread of its own every ``LEASE_RENEW_SECONDS`` of wall time, so a registry call
blocked in its retries does not let the lease run out under a live worker. A renewal that finds the plan
held by someone else marks the lease lost; the next step raises ``LeaseLost`` and nothing more is written
for that plan.

Taking back: a worker that starts takes the plans whose holder's process is gone (``Holder.outlived``:
same machine and boot, same pid namespace, and the pid no longer runs, or is this very process's own from
an earlier run), without waiting for the lease. A holder on another machine, in another pid namespace, or
whose pid still runs (even a reused one) is left to its lease: a plan a live worker runs is never taken.
A restarted container has a new pid namespace, and a worker on another machine or pod is no process of this
one: their plans wait for the lease, which is short (``LEASE_SECONDS``, renewed every
``LEASE_RENEW_SECONDS`` while the plan runs), so another worker takes over a SIGKILLed worker's plan within
it and a tick. Must not: decide anything about what a plan holds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType

from daemon.domain.policy import LEASE_RENEW_SECONDS, LEASE_SECONDS
from daemon.store import Store

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The plan is held by another worker now (this one was taken for dead): stop working on it."""


@dataclass(frozen=True)
class Holder:
    """Who holds a claim: a worker process (``run`` tells its runs apart) and, once claimed, the claim."""

    host: str
    boot: str  # the kernel's boot id; "" where unknown
    pidns: str  # the pid namespace; "" where unknown
    pid: int
    run: str
    claim: str = ""

    @property
    def worker_id(self) -> str:
        """How this worker process is listed among the workers: host, pid and the start of its run."""
        return f"{self.host}:{self.pid}:{self.run[:8]}"

    def new_claim(self) -> str:
        """The text a new claim by this process is stored under."""
        return json.dumps(asdict(replace(self, claim=uuid.uuid4().hex)), sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a claim names; None when the text is not one (written by an older release)."""
        try:
            raw = json.loads(text)
        except ValueError:
            return None
        if not isinstance(raw, dict) or set(raw) != {"host", "boot", "pidns", "pid", "run", "claim"}:
            return None
        pid = raw["pid"]
        strings = [raw[k] for k in ("host", "boot", "pidns", "run", "claim")]
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        if not all(isinstance(v, str) for v in strings):
            return None
        return cls(raw["host"], raw["boot"], raw["pidns"], pid, raw["run"], raw["claim"])

    def outlived(self, other: Holder) -> bool:
        """True when ``other`` was a worker process on this machine since its last boot, in this pid
        namespace, and is gone: what it held is this process's to take back at once. False whenever that
        cannot be told (then the lease decides)."""
        if other.run == self.run or not (self.boot and self.pidns):
            return False
        if (other.host, other.boot, other.pidns) != (self.host, self.boot, self.pidns):
            return False
        return other.pid == self.pid or not _running(other.pid)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (only asked where /proc tells)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process, or unknown: count it as running
        return True
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return not (fields and fields[0] in ("Z", "X"))  # exited, waiting to be reaped


_this: Holder | None = None


def this_process() -> Holder:
    """The holder this process claims as (a new ``run`` after a fork)."""
    global _this
    if _this is None or _this.pid != os.getpid():
        _this = Holder(socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), _pid_namespace(),
                       os.getpid(), uuid.uuid4().hex)
    return _this


class LeaseKeeper:
    """Keeps a claimed plan's lease while the work on it runs (a context manager around that work)."""

    def __init__(self, store: Store, plan_id: int, holder: str, clock: Callable[[], float], *,
                 lease_seconds: float = LEASE_SECONDS, every: float = LEASE_RENEW_SECONDS) -> None:
        self.store = store
        self.plan_id = plan_id
        self.holder = holder
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.every = every
        self._renewed = clock()  # the claim was just made
        self._lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._keep_in_background, name=f"lease-plan-{self.plan_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def keep(self) -> None:
        """At a step of the work: renew the lease when due; ``LeaseLost`` when the plan is not this
        worker's any more."""
        self._renew()
        if self._lost:
            raise LeaseLost(f"plan {self.plan_id} is held by another worker now")

    def _renew(self) -> None:
        with self._lock:
            now = self.clock()
            if self._lost or now - self._renewed < self.every:
                return
            if self.store.renew_plan_lease(self.plan_id, self.holder, now, self.lease_seconds):
                self._renewed = now
            else:
                self._lost = True
                log.warning("plan %s: the lease was lost (taken over by another worker); stopping work on it",
                            self.plan_id)

    def _keep_in_background(self) -> None:
        try:
            while not self._stop.wait(self.every / 2):  # twice per period: a renewal is never late
                try:
                    self._renew()
                except Exception as exc:  # storage busy or away: the next step or round tries again
                    log.warning("plan %s: renewing the lease failed: %s", self.plan_id, exc)
        finally:
            self.store.release_connection()
