# Headless KVM host: keep the QEMU driver, the daemon, udev-based node device
# enumeration (PCI passthrough inventory) and the Python binding the operator
# uses; drop the drivers and integrations of meta-virtualization's "full"
# default that a k3svirt node never uses. Scoped to the k3svirt distro.
PACKAGECONFIG:remove:k3svirt = "openvz vmware vbox esx lxc test netcf firewalld fuse libpcap"
PACKAGECONFIG:append:k3svirt = " qemu libvirtd remote udev python gnutls libcap-ng"
