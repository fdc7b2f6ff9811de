"""Task pool management methods of ``DefaultRunner`` (our extension, as Airflow's pools).

A pool is a named number of slots shared by every worker of the deployment; a task declared with
``@task(pool="warehouse", pool_slots=1)`` runs only while its pool has that many slots free (see
:mod:`cloacina.store.pools`). Pools live in the database: ``cloacina pools set``, the HTTP API and these methods
change the same rows. Pool dicts carry ``name``, ``slots``, ``used`` (slots taken by Running tasks), ``waiting``
(the pool's Ready tasks), ``description``, ``created_at`` and ``updated_at`` (RFC 3339 text).

>>> import cloacina as cloaca
>>> with cloaca.DefaultRunner(":memory:") as runner:
...     pool = runner.set_pool("warehouse", 2, description="the data warehouse")
...     (pool["slots"], pool["used"], pool["waiting"]), [p["name"] for p in runner.list_pools()]
((2, 0, 0), ['warehouse'])
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from cloacina.runner.errors import operation
from cloacina.runner.results import rfc3339
from cloacina.store.pools import PoolInfo, PoolStore, check_pool_name

if TYPE_CHECKING:
    from cloacina.deployment.wiring import Deployment


def pool_dict(pool: PoolInfo) -> dict[str, Any]:
    """A pool as the runner API returns it (times as RFC 3339 text)."""
    return {k: rfc3339(v) if isinstance(v, datetime) else v for k, v in pool.to_dict().items()}


class PoolAPI:
    """Mixed into DefaultRunner; uses its public ``deployment``."""

    deployment: Deployment

    @property
    def pools(self) -> PoolStore:
        return PoolStore(self.deployment.db)

    @operation("Failed to set pool")
    def set_pool(self, name: str, slots: int, description: str | None = None) -> dict[str, Any]:
        """Create pool ``name`` with ``slots`` slots, or change its slots (and description, when given).
        ``slots=0`` pauses the pool's tasks; ``ValueError`` for a bad name or ``slots < 0``."""
        return pool_dict(self.pools.set_pool(name, slots, description))

    @operation("Failed to list pools")
    def list_pools(self) -> list[dict[str, Any]]:
        """Every pool by name, with its slots in use and its waiting tasks."""
        return [pool_dict(p) for p in self.pools.list_pools()]

    @operation("Failed to get pool")
    def get_pool(self, name: str) -> dict[str, Any] | None:
        """Pool ``name``, or ``None`` if there is none."""
        check_pool_name(name)
        found = self.pools.get_pool(name)
        return pool_dict(found) if found is not None else None

    @operation("Failed to delete pool")
    def delete_pool(self, name: str) -> bool:
        """Delete pool ``name``; ``False`` if there was none. Tasks waiting for it fail (their pool is undefined);
        tasks running in it finish."""
        check_pool_name(name)
        return self.pools.delete_pool(name)
