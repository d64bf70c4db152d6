SUMMARY = "k3svirt host networking: br0, K3s node address, unmanaged container/VM links"
DESCRIPTION = "systemd-networkd configuration: wired NICs bridged into br0 \
(DHCP), a k3svirt0 dummy with K3s's node address, interfaces created by \
K3s and libvirt left unmanaged, and no network-online stall when offline."
HOMEPAGE = "https://k3svirt.invalid/"
LICENSE = "CLOSED"

SRC_URI = " \
    file://10-k3svirt-unmanaged.network \
    file://20-k3svirt0.netdev \
    file://20-k3svirt0.network \
    file://30-br0.netdev \
    file://30-br0.network \
    file://40-uplink.network \
    file://wait-online.conf \
"
S = "${UNPACKDIR}"

inherit allarch features_check
REQUIRED_DISTRO_FEATURES = "systemd"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${sysconfdir}/systemd/network
    for f in 10-k3svirt-unmanaged.network 20-k3svirt0.netdev 20-k3svirt0.network \
             30-br0.netdev 30-br0.network 40-uplink.network; do
        install -m 0644 ${S}/$f ${D}${sysconfdir}/systemd/network/$f
    done
    # OE-core's systemd-conf ships 80-wired.network (DHCP on every
    # Type=ether link but veth*): it would also match vnet*/tap* and the
    # NICs we enslave to br0. A same-named /etc entry masks it.
    ln -sf /dev/null ${D}${sysconfdir}/systemd/network/80-wired.network
    install -D -m 0644 ${S}/wait-online.conf \
        ${D}${sysconfdir}/systemd/system/systemd-networkd-wait-online.service.d/10-k3svirt.conf
}

FILES:${PN} += "${sysconfdir}/systemd"
CONFFILES:${PN} = "${sysconfdir}/systemd/network/30-br0.network ${sysconfdir}/systemd/network/40-uplink.network"
