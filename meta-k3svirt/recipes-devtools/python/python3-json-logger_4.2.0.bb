SUMMARY = "JSON formatter for the Python logging package"
DESCRIPTION = "A logging.Formatter that writes log records as JSON objects; kopf \
uses it for structured operator logs."
HOMEPAGE = "https://github.com/nhairs/python-json-logger"
LICENSE = "BSD-2-Clause"
LIC_FILES_CHKSUM = "file://LICENSE;md5=44a18ebf6d8412ddd5d29217ff70e291"

PYPI_PACKAGE = "python_json_logger"
UPSTREAM_CHECK_PYPI_PACKAGE = "python-json-logger"

SRC_URI[sha256sum] = "e371ebe22ec01e289850102091a2b1f6fc9e655c7f1f5f29073936756c290afa"

inherit pypi python_setuptools_build_meta

RDEPENDS:${PN} += "\
    python3-datetime \
    python3-json \
    python3-logging \
"
