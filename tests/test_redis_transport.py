"""The broker transport cloacina selects for ``redis://`` URLs: kombu's Redis transport with one client per
channel (cloacina.dispatch.redis_transport). Messages go out and are consumed as with kombu's own; the shared client
is built once, and again when kombu replaces the channel's pool. Real Redis, a database per test."""

from __future__ import annotations

from typing import Any

from kombu import Connection, Consumer, Queue

from cloacina.dispatch import redis_transport
from cloacina.dispatch.canvas import node_signature
from cloacina.dispatch.celery_app import CeleryOptions, celery_config, create_app


def test_redis_urls_select_it_and_other_schemes_keep_kombus() -> None:
    assert celery_config(CeleryOptions("redis://h:6379/0", "redis://h:6379/0"))["broker_transport"] == (
        redis_transport.TRANSPORT
    )
    for url in ("rediss://h:6380/0", "sentinel://h:26379"):
        assert "broker_transport" not in celery_config(CeleryOptions(url, "redis://h:6379/0"))


def test_publishes_share_one_client_and_arrive(redis_url: str, client: Any) -> None:
    app = create_app(CeleryOptions(redis_url, redis_url, queue="rt_queue", task_events=False))
    built: list[Any] = []
    original = redis_transport.Channel._create_client  # type: ignore[attr-defined]

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)
        built.append(made)
        return made

    redis_transport.Channel._create_client = counting  # type: ignore[attr-defined]
    try:
        for n in range(50):
            node_signature(app, f"run-{n}", "wf", ["a"], "rt_queue").apply_async()
    finally:
        redis_transport.Channel._create_client = original  # type: ignore[attr-defined]
    assert client.llen("rt_queue") == 50
    assert 1 <= len(built) <= 2  # per channel (kombu's own transport builds one per publish: 50)

    received: list[dict[str, Any]] = []
    with Connection(redis_url, transport=redis_transport.TRANSPORT) as conn:
        queue = Queue("rt_queue")

        def on_message(body: Any, message: Any) -> None:
            received.append(message.headers)
            message.ack()

        with Consumer(conn, [queue], callbacks=[on_message], accept=["json"]):
            while len(received) < 50:
                conn.drain_events(timeout=5)
    assert {h["kwargsrepr"] for h in received} == {
        f"{{'workflow': 'wf', 'run_id': 'run-{n}', 'tasks': ['a']}}" for n in range(50)
    }
    assert client.llen("rt_queue") == 0 and client.hlen("unacked") == 0


def test_a_replaced_pool_gets_a_new_client(redis_url: str) -> None:
    with Connection(redis_url, transport=redis_transport.TRANSPORT) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first:
            first.ping()
        with channel.conn_or_acquire() as again:
            assert again is first
        channel._pool = None  # what kombu does when it drops a broken pool
        with channel.conn_or_acquire() as fresh:
            assert fresh is not first and fresh.ping()
