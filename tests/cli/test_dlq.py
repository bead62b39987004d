"""`relayq dlq list` and `relayq dlq replay` on a dead-letter store written by a real queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relayq import QueueConfig, Runtime
from relayq.cli import main
from tests.support.http_receiver import HttpReceiver, Reply


def fill(path: Path) -> None:
    rt = Runtime()

    def down(conf: Any, entries: list[Any]) -> Any:
        return False, "503 from the collector"

    conf = QueueConfig(name="logs", max_retry_time=-1, max_batch_size=2,
                       max_coalescing_delay=0.05, dead_letter={"path": str(path)})
    rt.enqueue(conf, down, None, '{"request":{"id":"a"}}')
    rt.enqueue(conf, down, None, {"request": {"id": "b"}})
    assert rt.flush(5)
    assert rt.stats()["logs"].dead_lettered == 2


def test_list_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(tmp_path)
    assert main(["dlq", "list", "--path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "logs" in out and "503 from the collector" in out and "2 entries" in out
    with HttpReceiver() as rx:
        rx.script(Reply(500))
        assert main(["dlq", "replay", "--path", str(tmp_path), "--url", rx.url + "/in"]) == 1
        assert main(["dlq", "replay", "--path", str(tmp_path), "--url", rx.url + "/in"]) == 0
        refused, second = rx.wait_for(2)
    assert refused.body == second.body
    assert second.json() == [{"request": {"id": "a"}}, {"request": {"id": "b"}}]
    assert second.headers["x-relayq-queue"] == "logs"
    capsys.readouterr()
    assert main(["dlq", "list", "--path", str(tmp_path)]) == 0
    assert "no dead letters" in capsys.readouterr().out
