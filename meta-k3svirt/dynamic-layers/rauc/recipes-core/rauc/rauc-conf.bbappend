# k3svirt's RAUC configuration: the A/B slots of k3svirt-efi.wks.in and the
# systemd-boot backend (k3svirt-rauc). The keyring is the product's own CA
# certificate (public), given by the builder: meta-rauc's example CA would
# let anyone holding its key sign updates for every device.
FILESEXTRAPATHS:prepend:k3svirt := "${THISDIR}/files:"

# Read from the builder's path in do_install (its content is in the task
# signature), not fetched: no example CA from meta-rauc.
RAUC_KEYRING_URI:k3svirt = ""
RAUC_KEYRING_FILE:k3svirt = "k3svirt-keyring.pem"

# Parse-time skip with the reason (only in k3svirt builds, checked inside).
# nooelint: oelint.task.noanonpython,oelint.vars.noncoreoverride
python () {
    if 'k3svirt' in (d.getVar('DISTROOVERRIDES') or '').split(':') and not d.getVar('K3SVIRT_RAUC_KEYRING'):
        raise bb.parse.SkipRecipe("set K3SVIRT_RAUC_KEYRING to your update-signing CA certificate (PEM); "
                                  "see docs/yocto.md, Updates")
}

do_install:k3svirt() {
    install -d ${D}${nonarch_libdir}/rauc
    sed -e 's#@MACHINE@#${MACHINE}#g' ${UNPACKDIR}/system.conf > ${D}${nonarch_libdir}/rauc/system.conf
    chmod 0644 ${D}${nonarch_libdir}/rauc/system.conf
    install -m 0644 ${K3SVIRT_RAUC_KEYRING} ${D}${nonarch_libdir}/rauc/k3svirt-keyring.pem
}
do_install[file-checksums] += "${@'%s:True' % d.getVar('K3SVIRT_RAUC_KEYRING') if d.getVar('K3SVIRT_RAUC_KEYRING') else ''}"
# compatible= names the machine.
PACKAGE_ARCH:k3svirt = "${MACHINE_ARCH}"
