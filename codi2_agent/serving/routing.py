"""Which replica answers a request: `SessionAffinityRouter`, a Ray Serve request router.

A session sends its next turn only once its last one is answered. The sessions answered by one model
call therefore come back together and ask again together. Ray Serve's default router (the less queued
of two replicas picked at random) scatters those requests over the replicas. Each replica then starts
on the one or two that reached it, and the cohort never meets again: measured with 8 sessions on two
replicas, most model calls took 1 or 2 requests (``benchmarks/results/serve.txt``).

This router keeps each session on one replica, its *home*, so a cohort answered together asks again
at the same replica and is batched there.
- A new session's home is the replica with the fewest live sessions, so sessions spread evenly.
- A home that refuses a request (its queue is full) sends it to the least queued other replica.
- A home that is gone is replaced, and a session idle for ``idle_s`` loses its home.

The replicas hold no session state (media live in the shared artifact store), so a session that moves
loses batching, never correctness.

The session is the request's ``x-session-id`` header: Ray Serve's session header, renamed with
``RAY_SERVE_SESSION_ID_HEADER_KEY``. `RemoteBackend` sends `GenerateRequest.session`, which the
session graph sets to a hash of tenant and thread. Requests without the header are routed as Ray's
default router does.

Each router (one per Ray Serve proxy, i.e. per node with ``proxy_location: EveryNode``) keeps its
own homes. For a fleet where every proxy must agree without sharing state, Ray's
``ray.serve.experimental.consistent_hash_router.ConsistentHashRouter`` hashes the same header instead,
at the price of uneven splits when few sessions are live.

Enable it in a deployment of a Ray Serve config file (as ``serve_config.yaml`` does):

    request_router_config:
      request_router_class: codi2_agent.serving.routing:SessionAffinityRouter
      request_router_kwargs: {idle_s: 30}
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from ray.serve.request_router import RequestRouter

__all__ = ["ROUTER_CLASS", "SessionAffinityRouter", "SessionHomes"]

ROUTER_CLASS = "codi2_agent.serving.routing:SessionAffinityRouter"
DEFAULT_IDLE_S = 30.0
# A client chooses its session ids: the table is bounded, so made-up ids cannot grow a proxy's memory.
DEFAULT_MAX_SESSIONS = 10_000

Replica = TypeVar("Replica", bound=Hashable)


class SessionHomes(Generic[Replica]):
    """Sessions and their home replicas: the routing policy, free of Ray.

    Args:
        idle_s: a session not seen for this long loses its home and stops counting as live.
        max_sessions: the most sessions remembered; the least recently seen are forgotten first.
        clock: seconds, monotonic.
    """

    def __init__(
        self,
        idle_s: float = DEFAULT_IDLE_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not idle_s > 0 or max_sessions < 1:
            raise ValueError(f"idle_s must be > 0 and max_sessions >= 1, got {idle_s!r}, {max_sessions!r}")
        self.idle_s = float(idle_s)
        self.max_sessions = int(max_sessions)
        self._clock = clock
        self._homes: OrderedDict[str, tuple[Replica, float]] = OrderedDict()  # least recently seen first
        self._live: Counter[Replica] = Counter()  # live sessions per home

    def __len__(self) -> int:
        return len(self._homes)

    def live(self, replica: Replica) -> int:
        """How many live sessions have `replica` as their home."""
        return self._live[replica]

    def home(self, session: str, replicas: Sequence[Replica]) -> Replica:
        """`session`'s home among `replicas`, given one if it has none there (the least homed replica)."""
        if not replicas:
            raise ValueError("no replica to route to")
        now = self._clock()
        self._forget_idle(now)
        known = self._homes.pop(session, None)
        if known is not None:
            self._live[known[0]] -= 1
        while len(self._homes) >= self.max_sessions:  # room first, so the choice below sees the counts
            self._drop_oldest()
        if known is not None and known[0] in replicas:
            replica = known[0]
        else:
            fewest = min(self._live[r] for r in replicas)
            replica = random.choice([r for r in replicas if self._live[r] == fewest])
        self._homes[session] = (replica, now)
        self._live[replica] += 1
        return replica

    def keep_only(self, replicas: Sequence[Replica] | set[Replica]) -> None:
        """Forget the homes on replicas that are gone: their sessions get new ones on their next turn."""
        present = set(replicas)
        for session, (replica, _) in list(self._homes.items()):
            if replica not in present:
                del self._homes[session]
                self._live[replica] -= 1
        for replica in [r for r in self._live if r not in present]:
            del self._live[replica]

    def _forget_idle(self, now: float) -> None:
        while self._homes and now - next(iter(self._homes.values()))[1] > self.idle_s:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (replica, _) = self._homes.popitem(last=False)
        self._live[replica] -= 1


class SessionAffinityRouter(RequestRouter):
    """Ray Serve request router: each session's requests go to its home replica (see the module).

    ``request_router_kwargs``: ``idle_s`` (default 30) and ``max_sessions`` (default 10,000), as in
    `SessionHomes`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._homes: SessionHomes[Any] = SessionHomes()

    def initialize_state(
        self, idle_s: float = DEFAULT_IDLE_S, max_sessions: int = DEFAULT_MAX_SESSIONS, **unknown: Any
    ) -> None:
        if unknown:
            raise ValueError(f"SessionAffinityRouter takes idle_s and max_sessions, not {sorted(unknown)}")
        self._homes = SessionHomes(idle_s, max_sessions)

    async def choose_replicas(
        self, candidate_replicas: list[Any], pending_request: Any = None
    ) -> list[list[Any]]:
        """Ranks to try in order: the session's home, then the others (by queue length)."""
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # When every rank refuses, wait before the next round rather than spin.
            pending_request.routing_context.should_backoff = True
        session = pending_request.metadata.session_id if pending_request is not None else ""
        if not session:  # Ray's default: the less queued of two at random
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        by_id = {r.replica_id: r for r in candidate_replicas}
        home = self._homes.home(session, list(by_id))
        others = [r for r in candidate_replicas if r.replica_id != home]
        return [[by_id[home]], others] if others else [[by_id[home]]]

    def update_replicas(self, replicas: list[Any]) -> None:
        super().update_replicas(replicas)
        self._homes.keep_only({r.replica_id for r in replicas})
