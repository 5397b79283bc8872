"""The notifier's state file: groups and notifications survive a reopen (a restart)."""

from __future__ import annotations

from support import alert

from notifier.grouping import Group, Member
from notifier.store import SentStore


def test_groups_members_and_notifications_survive_a_reopen(tmp_path):
    path = tmp_path / "state.sqlite3"
    store = SentStore(path)
    group = Group("alice", "rule_id=high-temp", pending_since=5, last_sent=None)
    group.members["e1"] = Member(alert(alert_id="e1"), notified="firing")
    group.members["e2"] = Member(alert("resolved", alert_id="e2"), suppressed="firing")
    with store.transaction():
        store.record("e1", "firing", outcome="pending", attempts=0)
        store.save_group(group)
        seq = store.add_notification(
            owner="alice",
            group_key=group.key,
            channel="email",
            target="a@x.org",
            alerts=[group.members["e1"].alert],
            at=10,
        )
    store.close()

    store = SentStore(path)
    try:
        (back,) = store.groups()
        assert (back.owner, back.key, back.pending_since, back.last_sent) == (
            "alice",
            "rule_id=high-temp",
            5,
            None,
        )
        assert list(back.members) == ["e1", "e2"]
        assert back.members["e1"] == group.members["e1"]
        assert back.members["e2"] == group.members["e2"]
        (n,) = store.pending()
        assert (n.seq, n.owner, n.channel, n.target, n.state, n.created_at) == (
            seq,
            "alice",
            "email",
            "a@x.org",
            "pending",
            10,
        )
        assert n.alerts == (group.members["e1"].alert,)
        store.attempted(seq, 1, "421 busy")
        store.finish(seq, "sent", 2)
        store.settle([("e1", "firing")], "sent", 2)
        assert store.pending() == []
        assert store.outcome("e1", "firing") == ("sent", 2, None)
        store.settle([("e1", "firing")], "failed", 3, "late")  # settled: kept
        assert store.outcome("e1", "firing") == ("sent", 2, None)
        group.members.clear()
        with store.transaction():
            store.save_group(group)  # empty: removed
        assert store.groups() == []
    finally:
        store.close()


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    store = SentStore(tmp_path / "state.sqlite3")
    try:
        try:
            with store.transaction():
                store.record("e1", "firing", outcome="pending")
                raise RuntimeError("disk")
        except RuntimeError:
            pass
        assert not store.seen("e1", "firing")
    finally:
        store.close()


def test_a_failing_loop_of_the_notifier_ends_the_process(cloud_config):
    import asyncio

    from notifier.service import Notifier

    cfg = cloud_config.config
    notifier = Notifier(cfg.broker, cfg.notifier)
    fatal: list[bool] = []
    notifier.consumer.on_fatal = lambda: fatal.append(True)

    async def boom() -> None:
        raise OSError("disk gone")

    async def fine() -> None:
        return None

    async def main() -> None:
        for coro in (boom(), fine()):
            task = asyncio.create_task(coro, name="deliver")
            task.add_done_callback(notifier._task_ended)
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)

    try:
        asyncio.run(main())
    finally:
        notifier.store.close()
    assert fatal == [True]  # the failing loop only
