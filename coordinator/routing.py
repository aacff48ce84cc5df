"""Which worker gets a strip's next attempt, and when: the router, the per-worker request
slots, and the pure retry/backoff/failover decision.

Nothing here does I/O; `decide` is a pure function of the failure and the attempt history,
so the policy is unit-tested without processes (tests/coordinator/test_routing.py).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

from coordinator.discovery import WorkerStatus
from coordinator.errors import NoWorkerError
from coordinator.plan import OPERATIONS, Strip

BACKOFF_CAP_SECONDS = 1.0

# What went wrong in one attempt (Failure.kind):
DOWN = "down"  # connection error, timeout, cut reply, redirect: the worker is down for the job
BUSY = "busy"  # 503: retried after its Retry-After (capped)
SERVER = "server"  # other 5xx
BAD_REPLY = "bad_reply"  # a reply we refuse (size, mode, too large, undecodable)
TOKEN = "token"  # 401: not this worker for this strip
UNFIT = "unfit"  # its limits are too small for this strip
REFUSED = "refused"  # any other 4xx: our request is wrong, no worker will take it
CANCELLED = "cancelled"  # the job was cancelled while the exchange ran

# What to do about it (Decision.action):
RETRY_SAME = "retry-same"  # the worker stays a candidate, asked again no sooner than `delay`
FAILOVER = "failover"  # not this worker again for this strip
GIVE_UP = "give-up"  # the strip (and so the job) fails now


@dataclass(frozen=True)
class Failure:
    reason: str
    kind: str
    retry_after: float = 0.0  # seconds the worker asked for (503 Retry-After), uncapped


class StripFailed(Exception):
    """One attempt failed; carries the Failure that `decide` judges."""

    def __init__(self, reason: str, kind: str, retry_after: float = 0.0):
        super().__init__(reason)
        self.failure = Failure(reason, kind, retry_after)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    retry_after_max: float = 2.0
    backoff: float = 0.05
    backoff_cap: float = BACKOFF_CAP_SECONDS

    @classmethod
    def from_config(cls, config) -> RetryPolicy:
        return cls(retry_after_max=config.retry_after_max, backoff=config.backoff)


@dataclass(frozen=True)
class Decision:
    action: str  # RETRY_SAME | FAILOVER | GIVE_UP
    delay: float = 0.0  # before this worker is asked again (RETRY_SAME only)
    mark_down: bool = False  # the worker is down for every strip of the job


def decide(failure: Failure, tries: int, policy: RetryPolicy) -> Decision:
    """After an attempt on a worker failed (`tries`: attempts this strip has made on it, this
    one included): retry it later, move on for good, or give up. Whether another worker goes
    first is the router's call (least tried first); this says only when this one may be asked
    again: its Retry-After (capped), and never before the doubling backoff of its tries."""
    if failure.kind == REFUSED:
        return Decision(GIVE_UP)
    if failure.kind in (DOWN, TOKEN, UNFIT):
        return Decision(FAILOVER, mark_down=failure.kind == DOWN)
    backoff = min(policy.backoff * 2 ** (max(1, tries) - 1), policy.backoff_cap)
    retry_after = max(0.0, min(failure.retry_after, policy.retry_after_max))
    return Decision(RETRY_SAME, delay=max(backoff, retry_after))


@dataclass
class StripHistory:
    """A strip's attempts so far: tries per worker, workers ruled out, when each may be asked
    again, and the failure lines for the NoWorkerError."""

    tried: collections.Counter = field(default_factory=collections.Counter)
    excluded: set[str] = field(default_factory=set)
    delays: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, url: str, failure: Failure, decision: Decision) -> None:
        self.failures.append(f"{url}: {failure.reason}")
        if decision.action == FAILOVER:
            self.excluded.add(url)
        elif decision.action == RETRY_SAME:
            self.delays[url] = decision.delay

    def delay_for(self, url: str) -> float:
        return self.delays.pop(url, 0.0)


class WorkerSlots:
    """Cap on requests in flight per worker (its max_inflight), so our own strips queue here
    instead of collecting 503 busy. One instance is shared by every job of the process
    (SHARED_SLOTS), so concurrent jobs (CLI --jobs, page sessions) queue together; a test
    gives a Router its own."""

    def __init__(self):
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    def for_worker(self, worker: WorkerStatus) -> threading.BoundedSemaphore:
        with self._lock:
            if worker.url not in self._slots:
                self._slots[worker.url] = threading.BoundedSemaphore(max(1, worker.max_inflight))
            return self._slots[worker.url]


SHARED_SLOTS = WorkerSlots()


class Router:
    """Picks a worker for each attempt: capable, not down, least tried by this strip, the
    op's own runtime first, then the least loaded."""

    def __init__(self, workers: list[WorkerStatus], slots: WorkerSlots | None = None):
        self.all_workers = list(workers)
        self.workers = [w for w in workers if w.ok]
        self.slots = SHARED_SLOTS if slots is None else slots
        self.lock = threading.Lock()
        self.load = collections.Counter()
        self.down: dict[str, str] = {}

    def capable(self, op: str) -> list[WorkerStatus]:
        return [w for w in self.workers if w.offers(op)]

    def check_capable(self, layout: list[Strip]) -> None:
        for strip in layout:
            if not self.capable(strip.op):
                raise NoWorkerError(
                    strip.index,
                    strip.op,
                    self.unavailable_reasons(strip.op),
                    summary=f"no healthy worker offers {strip.op} (strip {strip.index + 1})",
                )

    def choose(self, op: str, tried: collections.Counter, excluded: set[str]) -> WorkerStatus | None:
        spec = OPERATIONS[op]
        with self.lock:
            candidates = [w for w in self.capable(op) if w.url not in excluded and w.url not in self.down]
            if not candidates:
                return None

            def cost(worker: WorkerStatus):
                own = worker.primary == op or (spec.primary_runtime or "") == worker.runtime
                return (tried[worker.url], self.load[worker.url] + (0 if own else 1), self.load[worker.url])

            chosen = min(candidates, key=cost)
            self.load[chosen.url] += 1
            return chosen

    def mark_down(self, url: str, reason: str) -> None:
        with self.lock:
            self.down.setdefault(url, reason)

    def unavailable_reasons(self, op: str) -> list[str]:
        """Why each worker cannot take op, for the one-line NoWorkerError."""
        return unavailable_reasons(self.all_workers, op)


def unavailable_reasons(workers: list[WorkerStatus], op: str) -> list[str]:
    reasons = []
    for worker in workers:
        if not worker.ok:
            reasons.append(f"{worker.url}: {worker.error or 'unhealthy'}")
        elif op not in worker.operations:
            reasons.append(f"{worker.url}: does not offer {op} (offers {', '.join(worker.operations) or 'nothing'})")
    return reasons
