"""VMTemplate status from a fresh list of the namespace's VMs (k3svirt_operator.template_status): marks
coalesce into one list per namespace, unchanged statuses are not written, deleted templates are skipped."""

from __future__ import annotations

from typing import Any

from k3svirt_common import templates
from k3svirt_operator.template_status import TemplateStatus

VERSION = {"version": "1.0.0", "spec": {"memory": {"size": "128Mi"}}}


def template(name: str, ns: str = "ns", status: dict | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": ns, "name": name, "generation": 1}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T03:00:00Z"
    return {"metadata": meta, "spec": {"versions": [VERSION]}, "status": status or {}}


def vm(name: str, tpl: str, ns: str = "ns") -> dict[str, Any]:
    return templates.usage_of({"metadata": {"namespace": ns, "name": name}, "spec": {"template": {"name": tpl}}})


class Fake:
    def __init__(self, stored: dict[tuple[str, str], dict], users: dict[str, list[dict]]) -> None:
        self.stored, self.users = stored, users
        self.gets: list[tuple[str, str]] = []
        self.listed: list[str] = []
        self.patched: list[tuple[str, str, dict]] = []

    def get(self, ns: str, name: str) -> dict | None:
        self.gets.append((ns, name))
        return self.stored.get((ns, name))

    def usage(self, ns: str) -> list[dict]:
        self.listed.append(ns)
        return self.users.get(ns, [])

    def patch(self, plural: str, ns: str | None, name: str, status: Any) -> None:
        self.patched.append((str(ns), name, dict(status)))


def make(fake: Fake) -> TemplateStatus:
    return TemplateStatus(fake.get, lambda: list(fake.stored.values()), fake.usage, fake.patch)


def test_a_burst_of_marks_is_one_list_per_namespace_and_one_write_per_changed_template():
    fake = Fake({("ns", "a"): template("a"), ("ns", "b"): template("b"), ("other", "c"): template("c", "other")},
                {"ns": [vm("v1", "a"), vm("v2", "a"), vm("v3", "b")]})  # fmt: skip
    ts = make(fake)
    for _ in range(100):  # 100 VMs of template a created at once
        ts.mark("ns", "a")
    ts.mark("ns", "b", fake.stored[("ns", "b")])  # a template event brings its body: no GET
    ts.mark("other", "c")
    assert ts.refresh(ts.take()) == 3
    assert sorted(fake.listed) == ["ns", "other"]
    assert fake.gets == [("ns", "a"), ("other", "c")]
    used = {name: st["usedBy"] for _ns, name, st in fake.patched}
    assert used["a"] == {"count": 2, "vms": [{"name": "v1", "version": ""}, {"name": "v2", "version": ""}]}
    assert used["b"]["count"] == 1 and used["c"]["count"] == 0
    assert not ts.take()  # taken: nothing left


def test_an_unchanged_status_is_not_written_and_gone_or_deleting_templates_are_skipped():
    users = [vm("v1", "a")]
    current = templates.compute_status(template("a"), users)
    fake = Fake({("ns", "a"): template("a", status={**current, "kopf": {"x": 1}}),
                 ("ns", "d"): template("d", deleting=True)}, {"ns": users})  # fmt: skip
    ts = make(fake)
    ts.mark("ns", "a")
    ts.mark("ns", "d")
    ts.mark("ns", "missing")
    assert ts.refresh(ts.take()) == 0
    assert fake.patched == [] and fake.listed == ["ns"]
    only_gone = make(Fake({}, {"ns": users}))
    only_gone.mark("ns", "missing")
    assert only_gone.refresh(only_gone.take()) == 0 and only_gone.lists == 0  # no list for nothing
