SUMMARY = "Module for converting between datetime.timedelta and Go's time.Duration strings"
DESCRIPTION = "Converts between datetime.timedelta and Go time.Duration strings \
("1h30m"), as used in Kubernetes API objects."
HOMEPAGE = "https://github.com/icholy/durationpy"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=490abae53c356237ecc4fad462dcc48a"

SRC_URI[sha256sum] = "181898e1ae282e288f0a2291829656bf1b6b3aadf30a97993b85db4943642905"

inherit pypi setuptools3

RDEPENDS:${PN} += "python3-datetime"
