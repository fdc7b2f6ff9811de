"""``TriggerResult`` and ``TriggerDefinition``: a poll function that tells the scheduler to skip or to fire a
workflow (declared with ``@trigger``, in :mod:`cloacina.definitions.declare`).

>>> import cloacina as cloaca
>>> @cloaca.trigger(workflow="doc_wf", poll_interval="100ms")
... def doc_trigger():
...     return cloaca.TriggerResult.fire(cloaca.Context({"k": 1}))
>>> doc_trigger()
TriggerResult.Fire(<context>)
>>> cloaca.TriggerResult.skip(), cloaca.TriggerResult.fire()
(TriggerResult.Skip, TriggerResult.Fire(None))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloacina.context import Context, coerce_context
from cloacina.errors import TriggerPollError


class TriggerResult:
    """The outcome of one poll: Skip, or Fire with an optional context."""

    __slots__ = ("_context", "_is_fire")

    def __init__(self, is_fire: bool, context: Context | None) -> None:
        self._is_fire = is_fire
        self._context = context

    @staticmethod
    def skip() -> TriggerResult:
        """The condition is not met; poll again next interval."""
        return TriggerResult(False, None)

    @staticmethod
    def fire(context: Context | Mapping[str, Any] | None = None) -> TriggerResult:
        """The condition is met; start the workflow with ``context`` (a Context or dict, or none)."""
        return TriggerResult(True, None if context is None else coerce_context(context, what="fire() context"))

    def is_fire_result(self) -> bool:
        return self._is_fire

    def is_skip_result(self) -> bool:
        return not self._is_fire

    @property
    def context(self) -> Context | None:
        return self._context

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TriggerResult):
            return NotImplemented
        return self._is_fire == other._is_fire and self._context == other._context

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self._is_fire:
            return "TriggerResult.Skip"
        return "TriggerResult.Fire(None)" if self._context is None else "TriggerResult.Fire(<context>)"


def to_trigger_result(value: object, trigger_name: str) -> TriggerResult:
    """Normalise what a poll function returned; ``TriggerPollError`` for anything unsupported."""
    if isinstance(value, TriggerResult):
        return value
    if value is True:
        return TriggerResult.fire()
    if value is False:
        return TriggerResult.skip()
    raise TriggerPollError(
        trigger_name,
        f"poll returned {type(value).__name__} {value!r:.80}; return TriggerResult.skip(), "
        "TriggerResult.fire(ctx), True or False",
    )


@dataclass(frozen=True)
class TriggerDefinition:
    """A registered trigger: its poll function and how it is scheduled."""

    name: str
    function: Callable[[], Any] = field(compare=False)
    workflow: str | None
    poll_interval_ms: int
    allow_concurrent: bool = False
    poll_interval: str = "5s"
    package_fingerprint: str | None = None  # set for triggers loaded from a .cloacina package
    cron: str | None = None  # set for @trigger(cron=...): a cron schedule of ``workflow``, never polled
    timezone: str = "UTC"  # IANA zone of ``cron``

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)
