SUMMARY = "k3svirt update bundle (RAUC)"
DESCRIPTION = "Signed RAUC bundle with the k3svirt-image root filesystem for \
the inactive A/B slot (docs/yocto.md, Updates)."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "MIT"
# A bundle recipe fetches nothing: bundle.bbclass packs the image named by
# RAUC_SLOT_rootfs.
# nooelint: oelint.var.mandatoryvar.SRC_URI
SRC_URI = ""

inherit bundle

RAUC_BUNDLE_COMPATIBLE = "k3svirt-${MACHINE}"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "k3svirt ${DISTRO_VERSION} for ${MACHINE}"
# verity: the bundle is checked block by block while it is installed, and
# can be streamed from a URL without a local copy.
RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "k3svirt-image"
RAUC_SLOT_rootfs[fstype] = "ext4"

# Signing key and certificate: the builder's, never in the layer.
RAUC_KEY_FILE ??= ""
RAUC_CERT_FILE ??= ""
# Skipping at parse time is the point: no bundle recipe without signing
# material, and a clear reason in `bitbake k3svirt-bundle`.
# nooelint: oelint.task.noanonpython
python () {
    for v in ('RAUC_KEY_FILE', 'RAUC_CERT_FILE'):
        if not d.getVar(v):
            raise bb.parse.SkipRecipe("set %s (bundle signing key/certificate; docs/yocto.md, Updates)" % v)
}
