#!/bin/sh
# The IOMMU test machine's init (tests/harness/iommu_machine.py), run as PID 1 from the repository
# share by the image's stub. No systemd: mounts, modules, the default route on the first NIC, then
# the job loop (every /jobs/<name>.sh that appears runs once; output <name>.out, status <name>.rc).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /dev/pts /dev/hugepages /run /tmp /guest /jobs /var/log/libvirt /var/lib/libvirt /var/run/libvirt
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -sfn /run /var/run 2>/dev/null
mount -t hugetlbfs -o pagesize=1G hugetlbfs /dev/hugepages
for m in e1000e vfio vfio_pci vfio_iommu_type1 9p tun; do modprobe "$m" 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro guest /guest
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 jobs /jobs
hostname k3svirt-iommu
ip link set lo up
# The first NIC (MAC ...:01) is the machine's uplink: QEMU's restricted user network, 10.0.2.0/24.
for n in /sys/class/net/*; do
  [ "$(cat "$n/address")" = "52:54:00:16:00:01" ] || continue
  ip link set "${n##*/}" up
  ip addr add 10.0.2.15/24 dev "${n##*/}"
  ip route add default via 10.0.2.2 dev "${n##*/}"
done
echo "K3SVIRT-IOMMU-READY $(uname -r) groups=$(set -- /sys/kernel/iommu_groups/*; echo $#)" > /dev/ttyS0
while true; do
  for job in /jobs/*.sh; do
    [ -e "$job" ] || continue
    base=${job%.sh}
    if [ -e "$base.rc" ] || [ -e "$base.running" ]; then continue; fi
    : > "$base.running"
    (cd /tmp && sh "$job" > "$base.out" 2>&1; echo $? > "$base.rc.tmp"; mv "$base.rc.tmp" "$base.rc")
  done
  [ -e /jobs/poweroff ] && break
  sleep 0.2
done
sync
echo o > /proc/sysrq-trigger
