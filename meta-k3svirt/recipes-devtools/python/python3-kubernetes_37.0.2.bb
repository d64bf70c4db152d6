SUMMARY = "Kubernetes python client"
DESCRIPTION = "Official Python client library for the Kubernetes API, generated \
from the OpenAPI specification, with kubeconfig and in-cluster config loading."
HOMEPAGE = "https://github.com/kubernetes-client/python"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=ad09685d909e7a9f763d2bb62d4bd6fb"

SRC_URI[sha256sum] = "6967599ef976d0bb9c663c3621e690db0e26fbab7cf5c5e3ccf7e11b790d2de9"

inherit pypi setuptools3

# requirements.txt of the sdist. Versions in wrynose (oauthlib 3.3,
# urllib3 2.6, typing-extensions 4.15, dateutil 2.9) are older than the
# floors it states; the client only uses long-stable APIs of each.
# pydantic is imported lazily by the optional dynamic/"typed" helpers only.
RDEPENDS:${PN} += "\
    python3-certifi \
    python3-dateutil \
    python3-durationpy \
    python3-google-auth \
    python3-json \
    python3-logging \
    python3-oauthlib \
    python3-pyyaml \
    python3-requests \
    python3-requests-oauthlib \
    python3-six \
    python3-typing-extensions \
    python3-urllib3 \
    python3-websocket-client \
"
