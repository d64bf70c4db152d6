from k3svirt_operator.vm_reconciler import stop_grace_seconds


def test_the_vms_grace_wins_over_the_node_default():
    assert stop_grace_seconds({"terminationGracePeriodSeconds": 5}, 30.0) == 5.0
    assert stop_grace_seconds({"terminationGracePeriodSeconds": 0}, 30.0) == 0.0  # 0 is a value, not unset


def test_unset_takes_the_node_default():
    assert stop_grace_seconds({}, 30.0) == 30.0
    assert stop_grace_seconds({"terminationGracePeriodSeconds": None}, 12.5) == 12.5
