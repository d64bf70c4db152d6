"""Which spec changes a running guest takes live (pure: domain XML in, plan out)."""

from __future__ import annotations

from k3svirt_operator.domain_xml import DomainContext, VMRef, build_domain
from k3svirt_operator.live_update import live_plan

REF = VMRef("ns1", "vm1", "0b3b1c9e-1111-4a4a-9a9a-000000000001", 1)
LIVE = {"memory": {"size": "128Mi", "maxSize": "512Mi"}, "cpu": {"sockets": 1, "maxVcpus": 4}}


def xml(spec: dict) -> str:
    return build_domain(REF, spec, DomainContext()).xml


def test_memory_and_vcpus_below_their_maxima_are_live():
    plan = live_plan(
        xml(LIVE), xml({"memory": {"size": "256Mi", "maxSize": "512Mi"}, "cpu": {"sockets": 2, "maxVcpus": 4}})
    )
    assert plan is not None
    assert (plan.memory_kib, plan.vcpus) == (256 * 1024, 2)
    assert plan.metadata["specHash"] != ""


def test_only_memory_changed_leaves_vcpus_alone():
    plan = live_plan(xml(LIVE), xml({**LIVE, "memory": {"size": "64Mi", "maxSize": "512Mi"}}))
    assert plan is not None and (plan.memory_kib, plan.vcpus) == (64 * 1024, None)


def test_anything_else_needs_a_restart():
    assert live_plan(xml(LIVE), xml({**LIVE, "devices": {"rng": True}})) is None  # another device
    raised_max = {"memory": {"size": "128Mi", "maxSize": "1Gi"}, "cpu": LIVE["cpu"]}
    assert live_plan(xml(LIVE), xml(raised_max)) is None  # the maximum itself is the domain's shape


def test_without_maxima_memory_and_vcpus_need_a_restart():
    base = {"memory": {"size": "128Mi"}, "cpu": {"sockets": 1}}
    assert live_plan(xml(base), xml({"memory": {"size": "256Mi"}, "cpu": {"sockets": 1}})) is None
    assert live_plan(xml(base), xml({"memory": {"size": "128Mi"}, "cpu": {"sockets": 2}})) is None


def test_unchanged_spec_has_no_plan():
    assert live_plan(xml(LIVE), xml(LIVE)) is None
