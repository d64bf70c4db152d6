"""Shared test data."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tests.polling import wait_until

# The test application the node test bed imports (tests/harness/images.sh builds it from Debian's
# busybox: httpd on $PORT answering "http-echo host=<pod> message=$MESSAGE"); override to try another.
APP_IMAGE = os.environ.get("K3SVIRT_TEST_APP_IMAGE", "localhost/k3svirt/http-echo:1.0")

TEMPLATE_YAML = """\
apiVersion: k3svirt.io/v1alpha1
kind: VMTemplate
metadata:
  name: {name}
spec:
  kind: Template
  description: tiny test template
  versions:
    - version: 1.0.0
      vm:
        cpu: {{cores: 1}}
        memory: {{size: 128Mi}}
"""

PRESET_YAML = """\
apiVersion: k3svirt.io/v1alpha1
kind: VMTemplate
metadata:
  name: {name}
spec:
  kind: Preset
  versions:
    - version: 0.1.0
      vm:
        cpu: {{model: host-passthrough}}
"""


def import_template(client, headers, ns: str, name: str, text: str | None = None) -> dict:
    r = client.post(
        f"/api/v1/templates?namespace={ns}",
        data=text or TEMPLATE_YAML.format(name=name),
        headers={**headers, "Content-Type": "application/yaml"},
    )
    assert r.status_code in (200, 201), r.get_data(as_text=True)
    return r.json


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 120.0, interval: float = 1.0) -> Any:
    """tests.polling.wait_until with the gateway tests' argument order (what is awaited first)."""
    return wait_until(fn, timeout, f"waiting for {what}", interval)
