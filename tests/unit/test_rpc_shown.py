"""What task monitoring (Flower, ``celery events``) is shown of a command: its ids and the
names of its other arguments, never a command line, an environment or a file's bytes."""

from __future__ import annotations

import json
from typing import Any

from celery import Celery

from shared import commands, rpc


def test_a_sent_task_shows_its_ids_and_not_its_secrets() -> None:
    app = Celery("shown", set_as_current=False)
    sent: list[dict[str, Any]] = []

    def publish(self: Any, producer: Any, name: str, message: Any, **options: Any) -> None:
        sent.append(message.headers)

    app.amqp.send_task_message = publish.__get__(app.amqp)  # type: ignore[method-assign]
    start = commands.ProcessStart(
        sandbox_id="s1",
        tenant_id="t1",
        process_id="p1",
        cmd="curl -H 'Authorization: Bearer sk-secret' https://example.test",
        env={"API_KEY": "sk-other-secret"},
        cwd="/work",
    )
    rpc.send(app, "host.h1", start.name, start.to_kwargs(), expires=5)
    [headers] = sent
    shown = json.loads(headers["kwargsrepr"])
    assert shown["sandbox_id"] == "s1" and shown["process_id"] == "p1"
    assert "cmd" in shown["other"] and "env" in shown["other"]
    assert headers["argsrepr"] == "()"
    assert "secret" not in json.dumps(headers)
