"""The health model under a Redis outage (issue 13): a poller and a worker serve ``/livez`` and ``/readyz`` on
their metrics ports while Redis is stopped for 20 s.

- ``/livez`` answers ``200`` throughout (the processes' own loops are fine: a liveness probe must not restart them);
- ``/readyz`` goes ``503`` during the outage and back to ``200`` after it;
- nothing restarts (the same processes run from start to end) and no run is lost (every item completes once).

Redis is a private ``redis-server`` of the test (no persistence: the restart also loses its data, so runs whose
messages were lost are republished by the sweeper from SQL). Probes are sampled from a thread of the test every
quarter second, as a kubelet would (more often, in fact).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.distributed_harness import (
    INBOX_APP,
    Cluster,
    RedisServer,
    all_done,
    wait_for_poller_ready,
    wait_for_worker_ready,
)
from tests.support import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
OUTAGE_S = 20.0


def status_of(url: str) -> int:
    """The HTTP status of ``GET url`` (0: no answer at all)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@dataclass
class ProbeSampler:
    """Samples ``/livez`` and ``/readyz`` of several services on a thread: ``samples[name]`` is a list of
    ``(monotonic time, livez status, readyz status)``."""

    ports: dict[str, int]
    samples: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, port in self.ports.items():
                base = f"http://127.0.0.1:{port}"
                sample = (time.monotonic(), status_of(base + "/livez"), status_of(base + "/readyz"))
                self.samples.setdefault(name, []).append(sample)
            self._stop.wait(0.25)  # the sampling period of this probe loop

    def between(self, name: str, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples.get(name, []) if start <= s[0] <= end]


def ready(port: int) -> bool:
    return status_of(f"http://127.0.0.1:{port}/readyz") == 200


@pytest.mark.timeout(300)
def test_redis_stopped_for_20s_livez_stays_up_readyz_goes_down_and_back(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    items = 8
    cluster.add_items(items)
    ports = {"worker": free_port(), "poller": free_port()}
    env = {"DIST_POLL_MS": "100", "DIST_TASK_S": "0.5"}
    worker = cluster.services.worker("w1", INBOX_APP, concurrency=2, CLOACINA_METRICS_PORT=str(ports["worker"]), **env)
    poller = cluster.services.poller("p1", INBOX_APP, CLOACINA_METRICS_PORT=str(ports["poller"]), **env)
    wait_for_worker_ready(worker)
    wait_for_poller_ready(poller)
    for name, port in ports.items():
        wait_until(lambda port=port: ready(port), 60, message=f"{name} /readyz to answer 200")
    pids = {p.name: p.pid for p in cluster.services.processes}

    sampler = ProbeSampler(ports)
    sampler.start()
    try:
        wait_until(lambda: cluster.active_runs() >= 1, 60, message="runs in flight", interval_s=0.05)
        outage_start = time.monotonic()
        redis_server.kill()
        while time.monotonic() - outage_start < OUTAGE_S:  # Redis stays down: the outage under test
            assert all(p.alive for p in cluster.services.processes), "a service died during the outage"
            time.sleep(0.5)
        redis_server.start()
        outage_end = time.monotonic()
        for name, port in ports.items():
            wait_until(lambda port=port: ready(port), 120, message=f"{name} /readyz to be 200 again", interval_s=0.5)
        back = time.monotonic()
        wait_until(lambda: all_done(cluster), 150, message="every item to complete after the outage", interval_s=0.5)
    finally:
        sampler.stop()

    for name in ports:
        during = sampler.between(name, outage_start, outage_end)
        assert len(during) >= 20, f"{name}: too few samples during the outage ({len(during)})"
        whole = sampler.between(name, outage_start - 1, back)
        not_live = [s for s in whole if s[1] != 200]
        assert not not_live, f"{name}: /livez was not 200 during the outage: {not_live[:5]}"
        assert any(s[2] == 503 for s in during), f"{name}: /readyz never went 503 during the outage"
        assert sampler.samples[name][-1][1:] == (200, 200), f"{name}: not live and ready at the end"

    # Nothing restarted: the same processes ran from start to end.
    assert all(p.alive for p in cluster.services.processes)
    assert {p.name: p.pid for p in cluster.services.processes} == pids
    # No run was lost: every item completed, exactly once.
    runs = cluster.runs()
    assert Counter(r["status"] for r in runs) == Counter({"Completed": items})
    assert sorted(r["item"] for r in runs) == list(range(1, items + 1))
