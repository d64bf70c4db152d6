"""When status.monitoring is worth an API write (stats.summary.worth_writing): pure decisions."""

from __future__ import annotations

from k3svirt_operator.stats.model import rfc3339
from k3svirt_operator.stats.summary import worth_writing

NOW = 1_800_000_000.0
SHOWN = {
    "cpuPercent": 20.0,
    "memoryUsedBytes": 500 * 2**20,
    "memoryTotalBytes": 1024 * 2**20,
    "diskReadBytesPerSec": 1_000_000,
    "diskWriteBytesPerSec": 0,
    "diskReadIOPS": 40.0,
    "diskWriteIOPS": 0.0,
    "networkRxBytesPerSec": 1200,
    "networkTxBytesPerSec": 1210,
    "updatedAt": rfc3339(NOW - 60),
    "statsIntervalSeconds": 2.0,
    "statsDegraded": None,
    "endpoint": "http://10.0.0.1:9470/stats/ns/vm",
}


def fresh(**changes: object) -> dict[str, object]:
    return {**SHOWN, "updatedAt": rfc3339(NOW), **changes}


def test_noise_is_not_written():
    assert not worth_writing(SHOWN, fresh(), NOW, 300)
    assert not worth_writing(SHOWN, fresh(cpuPercent=24.9), NOW, 300)  # < 5 points
    assert not worth_writing(SHOWN, fresh(memoryUsedBytes=540 * 2**20), NOW, 300)  # < 5 % of 1 GiB
    assert not worth_writing(SHOWN, fresh(networkRxBytesPerSec=60_000), NOW, 300)  # under the 64 KiB/s floor
    assert not worth_writing(SHOWN, fresh(diskReadBytesPerSec=1_200_000), NOW, 300)  # < a quarter
    assert not worth_writing(SHOWN, fresh(diskWriteIOPS=9.0), NOW, 300)


def test_material_moves_are_written():
    assert worth_writing(SHOWN, fresh(cpuPercent=25.0), NOW, 300)
    assert worth_writing({**SHOWN, "cpuPercent": 380.0}, fresh(cpuPercent=280.0), NOW, 300)  # a quarter of 380
    assert not worth_writing({**SHOWN, "cpuPercent": 380.0}, fresh(cpuPercent=300.0), NOW, 300)
    assert worth_writing(SHOWN, fresh(memoryUsedBytes=560 * 2**20), NOW, 300)
    assert worth_writing(SHOWN, fresh(memoryTotalBytes=2048 * 2**20), NOW, 300)  # balloon resize
    assert worth_writing(SHOWN, fresh(diskReadBytesPerSec=1_300_000), NOW, 300)
    assert worth_writing(SHOWN, fresh(networkTxBytesPerSec=100_000), NOW, 300)


def test_appearing_vanishing_and_non_figures_are_written():
    assert worth_writing(SHOWN, fresh(cpuPercent=None), NOW, 300)  # the VM stopped
    assert worth_writing({**SHOWN, "cpuPercent": None}, fresh(), NOW, 300)  # first rate
    assert worth_writing(SHOWN, fresh(statsDegraded="stats interval stretched"), NOW, 300)
    assert worth_writing(SHOWN, fresh(statsIntervalSeconds=9.5), NOW, 300)


def test_a_stretched_interval_is_rewritten_on_onset_end_and_big_moves_only():
    """The degraded message carries the round cost (new text every round) and the stretched interval
    moves by half-second steps: 100 stretched VMs were written twice a minute each for that alone."""
    stretched = SHOWN | {"statsIntervalSeconds": 4.0, "statsDegraded": "stats interval stretched: 0.35 s"}
    assert not worth_writing(stretched, stretched | {"statsDegraded": "stats interval stretched: 0.41 s"}, NOW, 300)
    assert not worth_writing(stretched, stretched | {"statsIntervalSeconds": 4.5}, NOW, 300)
    assert worth_writing(stretched, stretched | {"statsIntervalSeconds": 6.0}, NOW, 300)
    assert worth_writing(stretched, stretched | {"statsIntervalSeconds": 2.0, "statsDegraded": None}, NOW, 300)
    assert worth_writing(SHOWN, fresh(endpoint="http://10.0.0.2:9470/stats/ns/vm"), NOW, 300)
    assert worth_writing({}, fresh(), NOW, 300)  # nothing shown yet
    extra = {**SHOWN, "oldKey": 1}
    assert worth_writing(extra, {**fresh(), "oldKey": None}, NOW, 300)  # cleared by the merge patch


def test_figures_shown_too_long_are_rewritten_unchanged():
    assert not worth_writing(SHOWN, fresh(), NOW, 61)
    assert worth_writing(SHOWN, fresh(), NOW, 60)
    assert worth_writing({**SHOWN, "updatedAt": "not a time"}, fresh(), NOW, 300)
    # no fresh figures (stopped VM, all null): nothing to refresh, however old
    stopped = {k: None for k in SHOWN} | {"endpoint": SHOWN["endpoint"], "statsIntervalSeconds": 2.0}
    assert not worth_writing(stopped, dict(stopped), NOW, 0)
