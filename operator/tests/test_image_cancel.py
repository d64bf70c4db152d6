"""A download no VM wants any more stops: a VM deleted while its image downloads must not keep
writing the cache's .part file (issue 14). Real loopback servers that trickle or stall."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from k3svirt_operator import image_cache
from k3svirt_operator.image_cache import DownloadCancelled, ensure_image
from k3svirt_operator.image_fetch import FetchPolicy

from tests.polling import wait_until
from tests.slow_http import slow_server

LOOPBACK_OK = FetchPolicy(allow_loopback=True)


def _start(url: str, root: Path, uid: str, out: dict[str, BaseException | None]) -> threading.Thread:
    def run() -> None:
        try:
            ensure_image(url, None, root, LOOPBACK_OK, wanted_by=uid)
            out[uid] = None
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out[uid] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _parts(root: Path) -> list[Path]:
    return list((root / "images").glob(".*.part"))


@pytest.mark.parametrize("stall", [False, True], ids=["trickling", "stalled"])
def test_the_download_stops_when_the_last_vm_that_wanted_it_is_withdrawn(tmp_path: Path, stall: bool):
    root = tmp_path / "root"
    uid_a, uid_b = f"uid-a-{stall}", f"uid-b-{stall}"  # uids are unique: a withdrawn one stays withdrawn
    with slow_server(declared=1 << 30, seconds=60, stall=stall) as (base, started):
        url = base + "/img"
        out: dict[str, BaseException | None] = {}
        a = _start(url, root, uid_a, out)
        wait_until(started.is_set, 10, "the download never began")
        wait_until(lambda: _parts(root), 10, "no partial file appeared")
        b = _start(url, root, uid_b, out)  # waits for the same URL (one download per URL)
        wait_until(lambda: uid_b in image_cache._wanted_by.get(url, set()), 10, "the second VM never waited")
        assert image_cache.withdraw(uid_a) == []  # uid-b still wants it: it goes on
        time.sleep(1)
        assert a.is_alive() and not out, out
        t0 = time.monotonic()
        assert image_cache.withdraw(uid_b) == [url]
        a.join(10)
        b.join(10)
        took = time.monotonic() - t0
        assert not a.is_alive() and not b.is_alive(), "a cancelled download kept running"
        assert isinstance(out[uid_a], DownloadCancelled) and isinstance(out[uid_b], DownloadCancelled), out
        assert took < 5, f"{took:.1f} s to stop"
        assert _parts(root) == [], "the cancelled download left its partial file"
        assert url not in image_cache._wanted_by and url not in image_cache._cancels


def test_a_withdrawn_vm_starts_no_download_and_others_are_not_hurt(tmp_path: Path):
    root = tmp_path / "root"
    image_cache.withdraw("uid-gone")
    with slow_server(declared=1 << 20, seconds=30) as (base, started):
        with pytest.raises(DownloadCancelled, match="being deleted"):
            ensure_image(base + "/img", None, root, LOOPBACK_OK, wanted_by="uid-gone")
        assert not started.is_set()
        # 1 MiB at 64 KiB / 0.2 s: a live VM's download completes (about 3 s)
        assert ensure_image(base + "/img", None, root, LOOPBACK_OK, wanted_by="uid-live").size == 1 << 20
