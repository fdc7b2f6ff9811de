"""The seam between the trigger poller and other poller replicas (implemented by ``DistributedGate``)."""

from __future__ import annotations

from typing import Protocol

from cloacina.definitions.trigger import TriggerDefinition


class PollGate(Protocol):
    """Coordination with other poller replicas (distributed mode); the embedded runner has none."""

    def may_poll(self, definition: TriggerDefinition) -> bool:
        """Whether this replica polls ``definition`` now (it owns it and won this interval's claim)."""
        ...

    def before_fire(self, definition: TriggerDefinition, context_hash: str) -> tuple[bool, str | None]:
        """Fast dedup path: ``(False, None)`` if a run for this key is known active, else ``(True, lock_token)``."""
        ...

    def after_fire(
        self, definition: TriggerDefinition, context_hash: str, token: str | None, run_id: str | None
    ) -> None:
        """Called after the SQL claim: keep (and renew) the lock of a created run, or give it back."""
        ...
