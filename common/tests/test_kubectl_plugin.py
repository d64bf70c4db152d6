import pytest
from k3svirt_common.kubectl_plugin import (
    PluginError,
    action_done,
    complete,
    console_key_path,
    expose_service,
    finished,
    flatten,
    namespace_flag,
    parser,
    power_patch,
    restore_object,
    snapshot_object,
    ssh_argv,
)

ACTION = "k3svirt.io/action-request"


def test_start_stop_change_run_strategy_restart_is_one_shot():
    vm = {"spec": {"runStrategy": "Always"}}
    assert power_patch(vm, "stop", "x") == {"spec": {"runStrategy": "Halted"}}
    assert power_patch(vm, "start", "x") == {"spec": {"runStrategy": "Always"}}
    assert power_patch(vm, "restart", "x") == {"metadata": {"annotations": {ACTION: "restart/x"}}}


def test_manual_vms_get_action_requests_only():
    vm = {"spec": {"runStrategy": "Manual"}}
    assert power_patch(vm, "stop", "id1") == {"metadata": {"annotations": {ACTION: "stop/id1"}}}


def test_action_done_needs_the_request_recorded_the_generation_observed_and_the_state():
    patch = {"metadata": {"annotations": {ACTION: "restart/a"}}}
    vm = {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "printableStatus": "Running"}}
    assert not action_done(vm, "restart", patch)
    vm["status"]["lastActionRequest"] = "restart/a"
    assert action_done(vm, "restart", patch)
    stop = {"spec": {"runStrategy": "Halted"}}
    assert not action_done({**vm, "metadata": {"generation": 3}}, "stop", stop)
    stopped = {"metadata": {"generation": 3}, "status": {"observedGeneration": 3, "printableStatus": "Stopped"}}
    assert action_done(stopped, "stop", stop)


def test_flatten_names_list_items():
    rows = flatten({"cpu": {"usagePercent": 1.5}, "disks": [{"name": "root", "readBytes": 7}], "x": None})
    assert rows == [("cpu.usagePercent", "1.5"), ("disks[root].name", "root"), ("disks[root].readBytes", "7")]


def test_ssh_argv_uses_the_first_address_and_user():
    vm = {"metadata": {"name": "v"}, "status": {"interfaces": [{"name": "a"}, {"ipAddress": "192.168.122.9"}]}}
    assert ssh_argv("root@v", vm, ["-v"]) == ["ssh", "-l", "root", "-v", "192.168.122.9"]
    assert ssh_argv("v", vm, []) == ["ssh", "192.168.122.9"]
    with pytest.raises(PluginError, match="no IP address"):
        ssh_argv("v", {"metadata": {"name": "v"}, "status": {}}, [])


def test_completion_candidates():
    vms = lambda: ["db", "web"]  # noqa: E731
    assert complete(["re"], vms) == ["restart", "restore"]
    assert complete(["snapshot", "w"], vms) == ["web"]
    assert complete(["ssh", "root@w"], vms) == ["root@web"]
    assert complete(["stats", ""], vms) == ["db", "web"]
    assert complete(["stats", "db", ""], vms) == []
    assert namespace_flag(["-n", "prod", "stop", ""]) == "prod"
    assert namespace_flag(["--namespace=dev", ""]) == "dev"
    assert namespace_flag(["stop", "-n"]) is None


def test_snapshot_and_restore_objects():
    snap = snapshot_object("ns", "web", "s1")
    assert snap["kind"] == "VirtualMachineSnapshot" and snap["spec"] == {"vmName": "web"}
    assert snap["metadata"] == {"name": "s1", "namespace": "ns", "labels": {"k3svirt.io/vm": "web"}}
    assert restore_object("ns", "web", "s1", "r1", None)["spec"] == {"snapshotName": "s1"}
    assert restore_object("ns", "web", "s1", "r1", "web")["spec"] == {"snapshotName": "s1"}  # in place
    assert restore_object("ns", "web", "s1", "r1", "web2")["spec"] == {"snapshotName": "s1", "target": {"name": "web2"}}


def test_finished_raises_the_failure_reason():
    ok = {"kind": "VirtualMachineSnapshot", "metadata": {"name": "s"}, "status": {"phase": "Ready"}}
    assert finished(ok, "Ready") and not finished({**ok, "status": {"phase": "InProgress"}}, "Ready")
    cond = {"type": "Ready", "reason": "VolumeNotSnapshottable", "message": "spec.disks[0].source.volume: no"}
    failed = {**ok, "status": {"phase": "Failed", "conditions": [cond]}}
    with pytest.raises(PluginError, match="VolumeNotSnapshottable: spec.disks"):
        finished(failed, "Ready")


def test_expose_builds_a_selector_less_service_for_exactly_that_vm():
    args = parser().parse_args(["expose", "web1", "--port", "22", "--type", "NodePort", "--node-port", "30022"])
    svc = expose_service(args, "team-a")
    assert svc["metadata"] == {"name": "web1", "namespace": "team-a",
                               "annotations": {"k3svirt.io/vm-selector": "k3svirt.io/vm-name=web1"}}  # fmt: skip
    assert "selector" not in svc["spec"] and svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [{"name": "p22", "port": 22, "targetPort": 22, "protocol": "TCP", "nodePort": 30022}]
    args = parser().parse_args(["expose", "web1", "--port", "80", "--target-port", "8080", "--name", "web"])
    assert expose_service(args, "ns")["spec"]["ports"][0]["targetPort"] == 8080
    with pytest.raises(PluginError, match="NodePort"):
        expose_service(parser().parse_args(["expose", "web1", "--port", "22", "--node-port", "30022"]), "ns")
    for bad in (["--port", "0"], ["--port", "70000"], ["--port", "x"], ["--port", "22", "--protocol", "ICMP"], []):
        with pytest.raises(SystemExit):
            parser().parse_args(["expose", "web1", *bad])


def test_console_key_path_quotes_the_secret_name():
    assert console_key_path("k3svirt-system/console-key") == "/api/v1/namespaces/k3svirt-system/secrets/console-key"
    # a '/' in the name cannot reach another resource: it is one quoted segment
    assert console_key_path("a/b/c") == "/api/v1/namespaces/a/secrets/b%2Fc"
    for bad in ("no-slash", "/name", "ns/", "ns/.."):
        with pytest.raises(PluginError, match="NAMESPACE/NAME"):
            console_key_path(bad)
