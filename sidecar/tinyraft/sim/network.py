"""Virtual time and an unreliable network for the simulator.

One seeded RNG drives everything, so a seed replays exactly. Messages are dropped,
delayed (which reorders them) and duplicated; partitions cut the members into two
sides. Nothing here knows about Raft."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class FaultPlan:
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message is delivered twice
    max_delay_ms: int = 5  # delays are uniform in [1, max_delay_ms]: later ones overtake
    partitions: bool = False
    crashes: bool = False
    membership: bool = False
    transfers: bool = False

    @staticmethod
    def random(rng: random.Random) -> FaultPlan:
        """Every fault kind on, at intensities drawn from the seed."""
        return FaultPlan(
            drop=rng.choice([0.0, 0.01, 0.05, 0.15]),
            duplicate=rng.choice([0.0, 0.02, 0.1]),
            max_delay_ms=rng.choice([2, 5, 15, 40]),
            partitions=True,
            crashes=True,
            membership=True,
            transfers=True,
        )

    def calm(self) -> FaultPlan:
        return FaultPlan(max_delay_ms=min(self.max_delay_ms, 5))


class Scheduler:
    """A priority queue of callbacks on a virtual millisecond clock."""

    def __init__(self) -> None:
        self.now = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0

    def at(self, time: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(time, self.now), self._seq, fn))

    def after(self, delay: int, fn: Callable[[], None]) -> None:
        self.at(self.now + delay, fn)

    def run_until(self, end: int, after_each: Callable[[], bool]) -> bool:
        """Run events up to `end`; stop early when after_each returns False."""
        queue = self._queue
        while queue and queue[0][0] <= end:
            self.now, _, fn = heapq.heappop(queue)
            fn()
            if not after_each():
                return False
        self.now = end
        return True


class Network:
    def __init__(self, sched: Scheduler, rng: random.Random, plan: FaultPlan) -> None:
        self.sched = sched
        self.rng = rng
        self.plan = plan
        self.side: dict[str, int] = {}  # member -> partition side; absent = connected

    def connected(self, a: str, b: str) -> bool:
        return self.side.get(a, 0) == self.side.get(b, 0)

    def partition(self, members: list[str]) -> None:
        shuffled = list(members)
        self.rng.shuffle(shuffled)
        cut = self.rng.randrange(1, len(shuffled))
        self.side = {m: (1 if i < cut else 0) for i, m in enumerate(shuffled)}

    def heal(self) -> None:
        self.side = {}

    def send(
        self, src: str, dst: str, deliver: Callable[[], None], lost: Callable[[], None]
    ) -> None:
        plan, rng = self.plan, self.rng
        if rng.random() < plan.drop:
            lost()
            return
        copies = 2 if rng.random() < plan.duplicate else 1
        for _ in range(copies):
            delay = rng.randint(1, plan.max_delay_ms)

            def arrive() -> None:
                if self.connected(src, dst):
                    deliver()
                else:
                    lost()

            self.sched.after(delay, arrive)
