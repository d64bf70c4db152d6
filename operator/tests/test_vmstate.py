"""Per-VM memory between passes: wake-ups only on real changes, our last write laid over a lagging watch."""

from __future__ import annotations

import asyncio

from k3svirt_operator import vmstate


def test_state_lives_in_the_memo_and_is_created_once():
    memo: dict = {}
    state = vmstate.of(memo)
    assert vmstate.of(memo) is state and memo[vmstate.MEMO_KEY] is state


def test_only_a_new_generation_or_action_counts_as_a_change():
    state = vmstate.VMState()
    assert state.changed((1, None))
    assert not state.changed((1, None))  # a status write of ours comes back: no wake-up
    assert state.changed((1, "restart/1"))
    assert state.changed((2, "restart/1"))


def test_view_lays_our_last_write_over_the_watched_status():
    state = vmstate.VMState()
    body = {"metadata": {"name": "a"}, "status": {"printableStatus": "Stopped", "node": "n1"}}
    assert state.view(body) == body
    state.written = {"printableStatus": "Running"}
    view = state.view(body)
    assert view["status"] == {"printableStatus": "Running", "node": "n1"}
    view["status"]["node"] = "x"
    assert body["status"]["node"] == "n1"  # a copy: the pass cannot change kopf's body


def test_summary_is_due_at_once_then_after_the_interval_or_when_figures_appear():
    state = vmstate.VMState()
    assert state.summary_due(30, shown=False, have_figures=False)
    assert not state.summary_due(30, shown=False, have_figures=False)
    assert not state.summary_due(30, shown=True, have_figures=True)
    assert state.summary_due(30, shown=False, have_figures=True)
    assert state.summary_due(0, shown=True, have_figures=False)


def test_loops_wake_only_registered_vms_from_other_threads():
    async def scenario() -> tuple[bool, bool, bool]:
        loops = vmstate.Loops(asyncio.get_running_loop())
        a, b = vmstate.VMState(), vmstate.VMState()
        with loops.running(("ns", "a"), a):
            await asyncio.to_thread(loops.poke_threadsafe, ("ns", "a"))
            await asyncio.to_thread(loops.poke_threadsafe, ("ns", "b"))  # not running: ignored
            await asyncio.sleep(0)
            woke_a, woke_b = a.wake.is_set(), b.wake.is_set()
        a.wake.clear()
        await asyncio.to_thread(loops.poke_all_threadsafe)  # a stopped: nothing left to wake
        await asyncio.sleep(0)
        return woke_a, woke_b, a.wake.is_set()

    assert asyncio.run(scenario()) == (True, False, False)
