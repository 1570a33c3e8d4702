"""Reliability suite: sizes for ``make test`` (CI subset) and ``make soak`` (``SOCTALK_SOAK=1``).

Every test here is marked ``reliability``. Sizes come from :data:`SIZES`; the CI subset keeps the
whole folder under ~4 minutes on 2 cores, the soak run uses the issue's full figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.reliability.results import soak


@dataclass(frozen=True)
class Sizes:
    crash_tenants: int
    kills_per_service: int
    kill_interval_s: float
    crash_converge_s: float
    cluster_events: int
    fuzz_examples: int
    security_tenants: int


CI = Sizes(crash_tenants=50, kills_per_service=3, kill_interval_s=1.0, crash_converge_s=180,
           cluster_events=1500, fuzz_examples=40, security_tenants=3)
SOAK = Sizes(crash_tenants=200, kills_per_service=10, kill_interval_s=2.0, crash_converge_s=900,
             cluster_events=20000, fuzz_examples=600, security_tenants=6)
SIZES = SOAK if soak() else CI


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)
