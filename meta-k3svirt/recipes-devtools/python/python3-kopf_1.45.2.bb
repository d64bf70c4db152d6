SUMMARY = "Kubernetes Operator Pythonic Framework"
DESCRIPTION = "Kopf is a framework to build Kubernetes operators in Python: \
handlers for resource events, timers, daemons and admission webhooks."
HOMEPAGE = "https://github.com/nolar/kopf"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=2edf9c5058d3f1f73d89a0b339a5b718"

SRC_URI[sha256sum] = "5baa180cfdebe1c5095d2a0a96d7d91825b6920541a0825c55719c36abb0054f"

inherit pypi python_setuptools_build_meta

DEPENDS += "python3-setuptools-scm-native"

# From pyproject.toml [project.dependencies]. aiohttp >= 3.14 is asked for;
# wrynose's meta-python ships 3.13.x, which kopf's API use is compatible with.
RDEPENDS:${PN} += "\
    python3-aiohttp \
    python3-asyncio \
    python3-click \
    python3-iso8601 \
    python3-json \
    python3-json-logger \
    python3-jsonpatch \
    python3-logging \
    python3-pyyaml \
    python3-typing-extensions \
"
