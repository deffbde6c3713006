"""A lane served by this host *and* the engine: local first, the engine for the overflow.

With ``engine_url`` set, a lane named in ``local_lanes`` keeps its own warm
workers and hands a job to the engine only when every local slot is taken
(``LanePool.outstanding`` counts queued and running jobs). A lane not named
there goes to the engine only (``EnginePool``). To ``Lifecycle`` both look
like one lane pool.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from daemon.engine.ingest import EnginePool
from daemon.wire import JobReply, JobRequest, Ready
from daemon.workers import InFlight, LanePool, SlotState

__all__ = ["SpillPool"]


class SpillPool:
    def __init__(self, local: LanePool, remote: EnginePool) -> None:
        self.local = local
        self.remote = remote
        self.lane = local.lane
        self.settings = local.settings
        self.spilled = 0

    # -- LanePool's public face: the local pool's, plus the engine's share -------------

    @property
    def slots(self) -> list[SlotState]:
        return self.local.slots

    @property
    def outstanding(self) -> int:
        return self.local.outstanding + self.remote.outstanding

    @property
    def capacity(self) -> int:
        return self.local.capacity + self.remote.capacity

    @property
    def warm(self) -> bool:
        return self.local.warm

    def has_room(self) -> bool:
        return self.local.has_room() or self.remote.has_room()

    def dead_slots(self) -> list[int]:
        return self.local.dead_slots()

    def worker_stats(self) -> list[dict[str, object]]:
        return self.local.worker_stats()

    def holding(self) -> AbstractContextManager[None]:
        return self.local.holding()

    def ready_info(self) -> Ready | None:
        return self.local.ready_info()

    def in_flight(self) -> list[InFlight]:
        return self.local.in_flight() + self.remote.in_flight()

    def summary(self) -> dict[str, object]:
        return {**self.local.summary(), "engine": self.remote.summary(), "spilled": self.spilled}

    def budget(self, job: JobRequest) -> float:
        return self.local.budget(job)

    async def start(self) -> None:
        await self.local.start()

    def stop_accepting(self) -> None:
        self.local.stop_accepting()
        self.remote.stop_accepting()

    async def close(self) -> None:
        await self.local.close()

    def prefers_local(self) -> bool:
        """A free local slot: convert here. Otherwise the engine takes the job."""
        return self.local.outstanding < len(self.local.slots) or not self.remote.has_room()

    async def run(
        self,
        job: JobRequest,
        timeout: float | None = None,
        on_start: Callable[[], None] | None = None,
        drop_fd: int | None = None,
    ) -> JobReply:
        if self.prefers_local():
            return await self.local.run(job, timeout, on_start, drop_fd)
        self.spilled += 1
        return await self.remote.run(job, timeout, on_start, drop_fd)
