"""The pipeline baseline, in its own process as the helm-runner is: N ``helm install`` of the tenant
chart through ``HelmGateway`` (helm-python-sdk in worker threads, the default executor, no ``--wait``)
at the helm-runner's concurrency (the consumer runtime keeps 16 messages in flight per route), into
namespaces that already exist.

``python -m bench.helm_direct <kubeconfig> <chart_path> <jobs.json>`` where jobs.json is
``[{"release", "namespace", "values"}, ...]``; prints ``{"elapsed_s", "install_ms": [...]}`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from soctalk_common.gateways.helm import HelmGateway

CONCURRENCY = 16  # the helm-runner's messages in flight per route (ServiceRuntime batch_size default)


async def main(kubeconfig: str, chart: str, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    helm = HelmGateway(kubeconfig, default_timeout=300)
    slots = asyncio.Semaphore(CONCURRENCY)
    times: list[float] = []

    async def one(job: dict[str, Any]) -> None:
        async with slots:
            t = time.perf_counter()
            await helm.install(job["release"], chart, job["namespace"], job["values"])
            times.append((time.perf_counter() - t) * 1e3)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(j) for j in jobs))
    elapsed = time.perf_counter() - t0
    helm.close()
    return {"elapsed_s": elapsed, "install_ms": times, "cpu_s": time.process_time()}


if __name__ == "__main__":
    jobs = json.loads(Path(sys.argv[3]).read_text())
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], jobs))))
