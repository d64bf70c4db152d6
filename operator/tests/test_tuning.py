"""NodeTuning against fixture sysfs/procfs roots: what is applied, recorded, restored and reported.
The real host's tunables are never written."""

from __future__ import annotations

from pathlib import Path

import pytest
from k3svirt_common import schema
from k3svirt_operator import tuning
from k3svirt_operator.tuning import NodeState, Roots


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    r = Roots(sys=tmp_path / "sys", proc=tmp_path / "proc")
    files = {
        r.sys / "kernel/mm/ksm/run": "0\n",
        r.sys / "kernel/mm/ksm/merge_across_nodes": "1\n",
        r.sys / "kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
        r.proc / "sys/vm/swappiness": "60\n",
        r.sys / "block/nvme0n1/queue/scheduler": "[none] mq-deadline kyber bfq\n",
        r.sys / "block/sda/queue/scheduler": "[mq-deadline] kyber bfq none\n",
        r.sys / "block/sdb/queue/scheduler": "[mq-deadline] kyber bfq none\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (r.sys / "block/loop0").mkdir()  # no queue/scheduler (a device without one)
    return r


SPEC = {
    "ksm": {"enabled": True, "mergeAcrossNodes": False},
    "transparentHugepages": "never",
    "swappiness": 10,
    "ioSchedulers": [{"device": "nvme0n1", "scheduler": "mq-deadline"}, {"device": "sd*", "scheduler": "bfq"}],
}


def read(roots: Roots) -> dict[str, str | None]:
    keys = ["ksm.run", "ksm.merge_across_nodes", "thp.enabled", "vm.swappiness"]
    keys += [f"block.{d}.scheduler" for d in ("nvme0n1", "sda", "sdb")]
    return tuning.read_current(keys, roots)


def test_the_crd_admits_the_spec_and_refuses_paths_and_empty_policies():
    obj = {"apiVersion": "k3svirt.io/v1alpha1", "kind": "NodeTuning", "metadata": {"name": "vm-host"}, "spec": SPEC}
    assert schema.validate_object("NodeTuning", obj) == []
    bad = {**SPEC, "ioSchedulers": [{"device": "../../proc/sys/kernel/x", "scheduler": "bfq"}]}
    assert any("ioSchedulers[0].device" in e.path for e in schema.validate_spec("NodeTuning", bad))
    assert any("swappiness" in e.path for e in schema.validate_spec("NodeTuning", {"swappiness": 201}))
    assert [e.path for e in schema.validate_spec("NodeTuning", {"nodeSelector": {"a": "b"}})] == ["spec"]


def test_parse_and_desired(roots: Roots):
    assert tuning.parse("always [madvise] never") == "madvise" and tuning.parse("60\n") == "60"
    assert tuning.block_devices(roots) == ["loop0", "nvme0n1", "sda", "sdb"]
    want = tuning.desired(SPEC, tuning.block_devices(roots))
    assert want == {
        "ksm.merge_across_nodes": "0",
        "ksm.run": "1",
        "thp.enabled": "never",
        "vm.swappiness": "10",
        "block.nvme0n1.scheduler": "mq-deadline",
        "block.sda.scheduler": "bfq",
        "block.sdb.scheduler": "bfq",
    }


def test_apply_records_found_and_applied_then_restore_puts_everything_back(roots: Roots):
    before = read(roots)
    state = tuning.reconcile(SPEC, NodeState(), roots)
    assert state.phase == "Applied", state.errors
    assert read(roots) == {
        "ksm.run": "1",
        "ksm.merge_across_nodes": "0",
        "thp.enabled": "never",
        "vm.swappiness": "10",
        "block.nvme0n1.scheduler": "mq-deadline",
        "block.sda.scheduler": "bfq",
        "block.sdb.scheduler": "bfq",
    }
    assert state.found == {k: v for k, v in before.items() if v is not None}
    assert state.applied == read(roots)
    # written as the kernel takes them: the bare value and a newline
    assert (roots.sys / "kernel/mm/transparent_hugepage/enabled").read_text() == "never\n"
    # a second pass changes nothing and keeps what was found first
    again = tuning.reconcile(SPEC, state, roots)
    assert again.found == state.found and again.applied == state.applied
    restored = tuning.release(again, roots)
    assert restored.phase == "Restored" and restored.errors == []
    assert read(roots) == before


def test_merge_across_nodes_is_changed_with_ksm_unmerged_first(roots: Roots):
    (roots.sys / "kernel/mm/ksm/run").write_text("1\n")
    writes, _ = tuning.plan_apply(
        {"ksm.merge_across_nodes": "0"}, tuning.read_current(["ksm.run", "ksm.merge_across_nodes"], roots), {}
    )
    assert writes == [("ksm.run", "2"), ("ksm.merge_across_nodes", "0"), ("ksm.run", "1")]


def test_a_spec_edit_restores_the_settings_it_no_longer_sets(roots: Roots):
    state = tuning.reconcile(SPEC, NodeState(), roots)
    fewer = {"swappiness": 10}
    state = tuning.reconcile(fewer, state, roots)
    assert state.found == {"vm.swappiness": "60"} and state.applied == {"vm.swappiness": "10"}
    now = read(roots)
    assert now["thp.enabled"] == "madvise" and now["ksm.run"] == "0" and now["block.sda.scheduler"] == "mq-deadline"


def test_a_value_changed_by_someone_else_is_left_alone_on_restore(roots: Roots):
    state = tuning.reconcile({"swappiness": 10}, NodeState(), roots)
    (roots.proc / "sys/vm/swappiness").write_text("30\n")  # the admin changed it meanwhile
    restored = tuning.release(state, roots)
    assert (roots.proc / "sys/vm/swappiness").read_text() == "30\n"
    assert any("vm.swappiness: left at 30" in e for e in restored.errors)


def test_missing_files_and_refused_writes_are_reported_naming_the_setting(roots: Roots, tmp_path: Path):
    (roots.sys / "kernel/mm/ksm/run").unlink()  # a kernel without KSM
    sched = roots.sys / "block/sda/queue/scheduler"
    sched.unlink()
    sched.mkdir()  # writing it fails (as the kernel refuses an unknown scheduler)
    state = tuning.reconcile(
        {"ksm": {"enabled": True}, "ioSchedulers": [{"device": "sda", "scheduler": "bfq"}]}, NodeState(), roots
    )
    assert state.phase == "PartlyApplied"
    assert any(e.startswith("ksm.run: not on this node") for e in state.errors), state.errors
    assert any(e.startswith("block.sda.scheduler: not on this node") for e in state.errors), state.errors


def test_a_write_the_kernel_ignores_is_reported(roots: Roots, monkeypatch):
    real = tuning.write

    def stubborn(writes, r):
        return real([w for w in writes if w[0] != "thp.enabled"], r)

    monkeypatch.setattr(tuning, "write", stubborn)
    state = tuning.reconcile({"transparentHugepages": "never", "swappiness": 5}, NodeState(), roots)
    assert state.phase == "PartlyApplied" and state.applied == {"vm.swappiness": "5"}
    assert state.errors == ["thp.enabled: wanted never, the node reports madvise"]


def test_conflicts_with_the_templates_host_settings(roots: Roots):
    host = {
        "preset-latency@1.0.0": {"ksm": False, "transparentHugepages": "never", "ioScheduler": "none"},
        "preset-density@1.0.0": {"ksm": True, "swappiness": 10},
    }
    state = tuning.reconcile(SPEC, NodeState(), roots, host)
    assert state.conflicts == [
        "preset-latency@1.0.0 wants ksm False; this NodeTuning sets ksm.run = 1",
        "preset-latency@1.0.0 wants ioScheduler none; block.nvme0n1.scheduler is set to mq-deadline",
        "preset-latency@1.0.0 wants ioScheduler none; block.sda.scheduler is set to bfq",
        "preset-latency@1.0.0 wants ioScheduler none; block.sdb.scheduler is set to bfq",
    ]
    assert "4 conflict(s)" in state.message


def test_two_nodetunings_on_one_node_the_older_applies_the_other_restores(roots: Roots):
    mine = tuning.reconcile({"swappiness": 10}, NodeState(), roots)
    candidates = {"b-new": ("2026-01-02T00:00:00Z", "b-new"), "a-old": ("2026-01-01T00:00:00Z", "a-old")}
    assert tuning.winner_among("a-old", candidates) is None
    assert tuning.winner_among("b-new", candidates) == "a-old"
    lost = tuning.reconcile({"swappiness": 10}, mine, roots, winner="a-old")
    assert lost.phase == "Conflict" and "a-old" in lost.message and lost.applied == {}
    assert (roots.proc / "sys/vm/swappiness").read_text() == "60\n"


def test_selects():
    assert tuning.selects({}, {"x": "y"}) and tuning.selects({"nodeSelector": {"role": "vm"}}, {"role": "vm"})
    assert not tuning.selects({"nodeSelector": {"role": "vm"}}, {"role": "db"})


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError):
        tuning.path_of("block.../etc.scheduler", Roots())


def test_an_io_scheduler_entry_naming_a_device_the_node_lacks_is_reported_naming_it(roots: Roots):
    spec = {
        "ioSchedulers": [
            {"device": "nvme1n1", "scheduler": "none"},  # not on this node
            {"device": "vd*", "scheduler": "none"},  # a prefix matching nothing: not an error
            {"device": "sda", "scheduler": "bfq"},
        ]
    }
    state = tuning.reconcile(spec, NodeState(), roots)
    assert state.phase == "PartlyApplied"
    assert state.applied == {"block.sda.scheduler": "bfq"}
    assert len(state.errors) == 1, state.errors
    error = state.errors[0]
    assert error.startswith("ioSchedulers[0] (device nvme1n1): no such block device on this node"), error
    assert str(roots.sys / "block/nvme1n1") in error and "loop0, nvme0n1, sda, sdb" in error
    assert state.message == "1 of 2 settings hold"
    # the device appears (hot-plugged): the next pass applies it and the error goes
    path = roots.sys / "block/nvme1n1/queue/scheduler"
    path.parent.mkdir(parents=True)
    path.write_text("[mq-deadline] kyber bfq none\n")
    state = tuning.reconcile(spec, state, roots)
    assert state.phase == "Applied" and state.errors == [], state.errors
    assert state.applied["block.nvme1n1.scheduler"] == "none" and path.read_text() == "none\n"
    assert tuning.release(state, roots).errors == []
    assert path.read_text() == "mq-deadline\n"


def test_a_scheduler_the_device_does_not_offer_is_not_written_and_is_reported(roots: Roots):
    sdb = roots.sys / "block/sdb/queue/scheduler"
    sdb.write_text("[mq-deadline] none\n")  # bfq and kyber not loaded for this queue
    state = tuning.reconcile({"ioSchedulers": [{"device": "sd*", "scheduler": "bfq"}]}, NodeState(), roots)
    assert state.phase == "PartlyApplied"
    assert state.applied == {"block.sda.scheduler": "bfq"}
    assert state.found == {"block.sda.scheduler": "mq-deadline"}  # sdb was never changed: nothing to restore
    assert state.errors == [
        "block.sdb.scheduler: device sdb does not offer the bfq scheduler (it offers mq-deadline, none; "
        "load its module, modprobe bfq, or pick an offered one)"
    ]
    assert sdb.read_text() == "[mq-deadline] none\n"  # untouched
    assert tuning.choices("[mq-deadline] kyber bfq none\n") == ["mq-deadline", "kyber", "bfq", "none"]
