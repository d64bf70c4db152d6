"""Shared helpers for the meta-k3svirt checks (tests/yocto).

None of these tests skip: a missing host tool is a failure that names the
package and points at tests/yocto/deps.sh, which installs everything.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYER = REPO / "meta-k3svirt"
DEVENV = REPO / "devenv"
DEPS_SH = Path(__file__).resolve().parent / "deps.sh"


def require_tool(name: str, package: str) -> str:
    """Return the path of `name`, looking next to the running Python too (venv tools)."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which(name) or shutil.which(name, path=str(venv_bin))
    if not found:
        pytest.fail(
            f"required tool {name!r} not found (package {package}); run `bash {DEPS_SH}` "
            "for host packages or the project venv installer for PyPI tools",
            pytrace=False,
        )
    return found
