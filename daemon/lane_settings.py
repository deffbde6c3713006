"""A lane's settings: its workers, budgets, express slots and memory caps.

Part of the one options model (``daemon.config.ProfileSettings.cpu`` and
``.gpu``); kept apart because every route's time budget lives here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["EXPRESS_ROUTES", "LANE_DEFAULTS", "ROUTE_BUDGETS", "LaneSettings", "RouteBudget"]


class RouteBudget(BaseModel):
    """A route's time budget: ``base_seconds`` plus ``seconds_per_mb`` of input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_seconds: float = Field(gt=0)
    seconds_per_mb: float = Field(default=0.0, ge=0)


# Measured on a 2-core machine (docs/performance.md): a legitimate file takes a
# fraction of these; a hostile one is stopped long before the lane's cap.
ROUTE_BUDGETS: dict[str, RouteBudget] = {
    "md->pdf": RouteBudget(base_seconds=30, seconds_per_mb=30),
    "md->docx": RouteBudget(base_seconds=20, seconds_per_mb=20),
    "html->md": RouteBudget(base_seconds=20, seconds_per_mb=10),
    "html->docx": RouteBudget(base_seconds=30, seconds_per_mb=20),
    "html->pdf": RouteBudget(base_seconds=30, seconds_per_mb=30),
    "docx->md": RouteBudget(base_seconds=60, seconds_per_mb=30),
    "pptx->md": RouteBudget(base_seconds=60, seconds_per_mb=30),
    "xlsx->md": RouteBudget(base_seconds=60, seconds_per_mb=30),
    "pdf->docx": RouteBudget(base_seconds=60, seconds_per_mb=60),
    "pdf->md": RouteBudget(base_seconds=120, seconds_per_mb=60),
}
EXPRESS_ROUTES: tuple[str, ...] = ("md->pdf", "md->docx", "html->md", "html->pdf", "html->docx")


class LaneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(default=1, ge=1, le=64)
    job_timeout_seconds: float = Field(default=600.0, gt=0)
    recycle_after_jobs: int = Field(default=200, ge=1)
    memory_ceiling_mb: int = Field(default=4096, ge=64)
    # RLIMIT_DATA of CPU-lane workers (and pandoc), as a multiple of the ceiling; 0: none.
    hard_memory_factor: float = Field(default=1.5, ge=0)
    retry_killed_jobs: bool = False
    budgets: dict[str, RouteBudget] = Field(default_factory=lambda: dict(ROUTE_BUDGETS))
    express_workers: int = Field(default=0, ge=0, le=8)
    express_max_bytes: int = Field(default=64 * 1024, ge=0)
    express_seconds: float = Field(default=5.0, gt=0)
    express_routes: tuple[str, ...] = EXPRESS_ROUTES
    # Niceness of the regular workers (and their pandoc): express workers keep the
    # daemon's own, so a small job, and an express worker's warm-up after an
    # overrun, get the CPU ahead of long conversions (docs/performance.md).
    regular_nice: int = Field(default=5, ge=0, le=19)

    def budget_seconds(self, route: str, input_bytes: int) -> float:
        """A job's time budget: its route's base plus a share per MB, capped by the lane.

        Pure, so that tests and docs state the budget a given input runs under.
        """
        rule = self.budgets.get(route)
        if rule is None:
            return self.job_timeout_seconds
        budget = rule.base_seconds + rule.seconds_per_mb * input_bytes / 2**20
        return min(self.job_timeout_seconds, budget)

    @field_validator("budgets")
    @classmethod
    def _over_defaults(cls, value: dict[str, RouteBudget]) -> dict[str, RouteBudget]:
        """A profile names the routes it changes; the others keep their defaults."""
        return {**ROUTE_BUDGETS, **value}


# Each lane's defaults where they differ from LaneSettings' own.
LANE_DEFAULTS: dict[str, dict[str, object]] = {
    "cpu": {"workers": 2, "job_timeout_seconds": 300, "express_workers": 2},
    "gpu": {"workers": 1, "job_timeout_seconds": 900},
}
