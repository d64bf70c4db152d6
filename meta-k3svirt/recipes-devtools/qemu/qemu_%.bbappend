# qemu for a KVM host. Scoped to the k3svirt distro; qemu-native and
# qemu-system-native (runqemu, build-time tools) are separate recipes and
# are not affected.
#
# x86_64 system emulation only: OE-core's default builds every
# architecture, and the empty "qemu" package RDEPENDS on all of them.
QEMU_TARGETS:k3svirt = "x86_64"

# For the target qemu: KVM, vhost-net, seccomp sandbox, virtfs (9p shares),
# Linux AIO and io_uring for disk I/O. Not for nativesdk-qemu (there is no
# nativesdk-libseccomp, for one). No GUI or audio backends, for every variant.
PACKAGECONFIG:append:k3svirt = " ${@'' if bb.data.inherits_class('nativesdk', d) else 'kvm vhost seccomp virtfs aio uring libcap-ng'}"
PACKAGECONFIG:remove:k3svirt = "sdl gtk+ virglrenderer epoxy alsa pulseaudio vte"
