"""Ship the repository's CRDs inside the k3svirt_common package when a wheel is built.

setuptools cannot package files outside the project directory (../crds), and symlinks do not
survive every build path, so build_py copies ../crds/*.yaml into <build>/k3svirt_common/crds/.
k3svirt_common.schema.crds_dir() falls back to that directory when no checkout is around.
Metadata stays in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCrds(build_py):
    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent.parent / "crds"
        if not src.is_dir():
            return  # building from an sdist that already carries k3svirt_common/crds
        dest = Path(self.build_lib) / "k3svirt_common" / "crds"
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.glob("*.yaml")):
            shutil.copy2(f, dest / f.name)


setup(cmdclass={"build_py": BuildPyWithCrds})
