# Headless KVM host: keep the QEMU driver, the daemon, udev-based node device
# enumeration (PCI passthrough inventory) and the Python binding the operator
# uses; drop the drivers and integrations of meta-virtualization's "full"
# default that a k3svirt node never uses. Scoped to the k3svirt distro.
FILESEXTRAPATHS:prepend:k3svirt := "${THISDIR}/files:"
SRC_URI:append:k3svirt = " file://libvirtd-socket-root-only.conf file://libvirt-guests.conf"

PACKAGECONFIG:remove:k3svirt = "openvz vmware vbox esx lxc test netcf firewalld fuse libpcap"
PACKAGECONFIG:append:k3svirt = " qemu libvirtd remote udev python gnutls libcap-ng"

# Undo three defaults meta-virtualization's recipe bakes in:
#  1. With "gnutls" it generates a sample CA, server and client key at
#     BUILD time and installs them (private keys mode 0644): every device
#     would carry the same private keys. The node needs no libvirt TLS (the
#     operator uses the local UNIX socket; the TCP/TLS listeners stay off):
#     drop the keys, the certificates and the helper that made them. Who
#     wants remote TLS generates per-device keys on the device.
#  2. unix_sock_rw_perms "0776" (world-writable read-write socket = root
#     for any local user): root-only, here and in the socket units.
#  3. qemu.conf seccomp_sandbox = 0: QEMU's own seccomp sandbox back on
#     (the distro has "seccomp", qemu is built with it).
# hugetlbfs_mount: the 1 GiB (default) and 2 MiB hugetlbfs mounts
# (k3svirt-host-config), so VMs can ask for either page size.
do_install:append:k3svirt() {
    rm -f ${D}${sysconfdir}/pki/libvirt/private/cakey.pem \
          ${D}${sysconfdir}/pki/libvirt/private/serverkey.pem \
          ${D}${sysconfdir}/pki/libvirt/private/clientkey.pem \
          ${D}${sysconfdir}/pki/libvirt/servercert.pem \
          ${D}${sysconfdir}/pki/libvirt/clientcert.pem \
          ${D}${sysconfdir}/pki/CA/cacert.pem \
          ${D}${bindir}/gnutls-helper.py

    sed -i -e 's/^\(unix_sock_rw_perms\ =\ \).*/\1"0700"/' \
           -e 's/^\(unix_sock_group\ =\ .*\)/#\1/' \
        ${D}${sysconfdir}/libvirt/libvirtd.conf
    if grep -q '^unix_sock_rw_perms = "0700"' ${D}${sysconfdir}/libvirt/libvirtd.conf; then :; else
        bbfatal "libvirtd.conf: could not set unix_sock_rw_perms to 0700"
    fi

    sed -i -e '/^seccomp_sandbox = 0$/d' ${D}${sysconfdir}/libvirt/qemu.conf
    printf '%s\n' 'seccomp_sandbox = 1' \
        'hugetlbfs_mount = ["/dev/hugepages", "/dev/hugepages2M"]' \
        >> ${D}${sysconfdir}/libvirt/qemu.conf

    for sock in libvirtd.socket libvirtd-ro.socket virtqemud.socket virtqemud-ro.socket; do
        install -D -m 0644 ${UNPACKDIR}/libvirtd-socket-root-only.conf \
            ${D}${systemd_system_unitdir}/$sock.d/50-k3svirt-root-only.conf
    done

    # Reboots (updates) shut guests down instead of trying to save them.
    install -D -m 0644 ${UNPACKDIR}/libvirt-guests.conf ${D}${sysconfdir}/sysconfig/libvirt-guests
}

FILES:${PN}-libvirtd:append:k3svirt = " ${sysconfdir}/sysconfig/libvirt-guests"
CONFFILES:${PN}-libvirtd:append:k3svirt = " ${sysconfdir}/sysconfig/libvirt-guests"
