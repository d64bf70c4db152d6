SUMMARY = "CoreDNS cluster DNS for K3s, built from its Go module"
DESCRIPTION = "CoreDNS (github.com/coredns/coredns), the version the k3svirt \
test node runs, built from its Go module and its pinned dependencies into an \
OCI archive in /var/lib/rancher/k3s/agent/images, with the manifest that runs \
it as the cluster DNS (kube-dns Service at K3s's cluster-dns address). K3s's \
own CoreDNS add-on is disabled (k3svirt-k3s-config): its image would need a \
registry or the release's air-gap tarball."
HOMEPAGE = "https://coredns.io/"
# CoreDNS's own licence. The ~200 linked modules carry theirs (Apache-2.0,
# BSD-2/3-Clause, MIT, MPL-2.0, ISC, CC0-1.0); a -licenses.inc as OE-Core's
# go-mod-update-modules writes needs a hand mapping first (its finder
# leaves 41 of 208 licence files "Unknown") - docs/yocto.md, "Open items".
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://src/${GO_IMPORT}/LICENSE;md5=dbc4913e3e1413855af21786998a0c49"

GO_IMPORT = "github.com/coredns/coredns"
# The main module is the zip the Go module proxy serves for this version
# (what `go install github.com/coredns/coredns@v1.15.0` builds on the test
# node), pinned by sha256; its dependencies, each pinned the same way, are in
# the generated -go-mods.inc (meta-k3svirt/scripts/update-coredns-go-mods).
SRC_URI = "gomod://${GO_IMPORT};version=v${PV};sha256sum=${COREDNS_MAIN_SHA256} \
    file://coredns.yaml.in \
"
require ${BPN}-go-mods.inc

inherit go-mod k3svirt_oci_archive

S = "${UNPACKDIR}/coredns"

K3SVIRT_OCI_REF = "localhost/k3svirt/coredns:v${PV}"
K3SVIRT_OCI_ENTRYPOINT = "/coredns"
# Unprivileged: it serves on 5353 (the Service maps 53 to it), so it needs
# no capability at all.
K3SVIRT_OCI_USER = "65532:65532"

# K3s's cluster DNS address (its default --cluster-dns, 10.43.0.10; change
# both together).
K3SVIRT_CLUSTER_DNS ??= "10.43.0.10"

# The source tree: the main module's zip (already in the module cache the
# gomod fetcher filled) extracted where go.bbclass looks (${S}/src/GO_IMPORT).
python do_unpack:append() {
    import zipfile
    name = d.getVar('GO_IMPORT') + '@v' + d.getVar('PV')
    zpath = os.path.join(d.getVar('GOMODCACHE'), 'cache', 'download', d.getVar('GO_IMPORT'), '@v', 'v%s.zip' % d.getVar('PV'))
    dest = os.path.join(d.getVar('S'), 'src', d.getVar('GO_IMPORT'))
    bb.utils.remove(dest, recurse=True)
    with zipfile.ZipFile(zpath) as zf:
        for member in zf.infolist():
            if not member.filename.startswith(name + '/'):
                bb.fatal("%s: unexpected entry %s" % (zpath, member.filename))
            rel = member.filename[len(name) + 1:]
            if not rel or rel.endswith('/'):
                continue
            target = os.path.join(dest, rel)
            bb.utils.mkdirhier(os.path.dirname(target))
            with zf.open(member) as src, open(target, 'wb') as out:
                out.write(src.read())
}

# Static, no cgo (as the upstream release and the test node build it); the
# module cache is complete, so the build never asks a proxy.
export CGO_ENABLED = "0"
export GOPROXY = "off"
export GOSUMDB = "off"
export GOTOOLCHAIN = "local"

do_compile() {
    cd ${B}/src/${GO_IMPORT}
    ${GO} build -modcacherw -trimpath -ldflags "-s -w" -o ${B}/coredns .
    install -D -m 0755 ${B}/coredns ${K3SVIRT_OCI_ROOTFS}/coredns
}

do_install() {
    k3svirt_oci_install
    # K3s's deploy controller applies it at every start (namespace kube-system).
    install -d -m 0700 ${D}${localstatedir}/lib/rancher/k3s/server/manifests
    sed -e 's#@IMAGE@#${K3SVIRT_OCI_REF}#g' -e 's#@CLUSTER_DNS@#${K3SVIRT_CLUSTER_DNS}#g' \
        ${UNPACKDIR}/coredns.yaml.in > ${D}${localstatedir}/lib/rancher/k3s/server/manifests/k3svirt-05-coredns.yaml
    chmod 0600 ${D}${localstatedir}/lib/rancher/k3s/server/manifests/k3svirt-05-coredns.yaml
}

FILES:${PN} += "${localstatedir}/lib/rancher/k3s/server/manifests"
COMPATIBLE_HOST = "x86_64.*-linux"
