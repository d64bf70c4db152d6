# k3svirt_oci_archive: turn a directory a recipe built (K3SVIRT_OCI_ROOTFS)
# into a single-layer OCI image archive that K3s imports at start.
#
# K3s imports every archive in /var/lib/rancher/k3s/agent/images/ into its
# containerd (namespace k8s.io) each time it starts, so the node's own images
# need no registry. The archive is an OCI image layout in a tar (what
# `ctr export` writes): oci-layout, index.json naming the image
# (io.containerd.image.name, org.opencontainers.image.ref.name), the manifest,
# the config and one gzip layer. Written here in Python, deterministically
# (sorted entries, owner 0:0, SOURCE_DATE_EPOCH times, gzip without a
# timestamp): the same inputs give the same image digest.
#
# A recipe sets:
#   K3SVIRT_OCI_REF         image reference, e.g. localhost/k3svirt/pause:3.10
#   K3SVIRT_OCI_ENTRYPOINT  space-separated entrypoint argv
#   K3SVIRT_OCI_USER        "uid:gid" the image runs as ("" = root)
# fills ${K3SVIRT_OCI_ROOTFS} in do_compile and calls k3svirt_oci_install
# in do_install.

K3SVIRT_OCI_REF ??= ""
K3SVIRT_OCI_ENTRYPOINT ??= ""
K3SVIRT_OCI_USER ??= ""
K3SVIRT_OCI_ROOTFS = "${WORKDIR}/oci-rootfs"
K3SVIRT_OCI_ARCHIVE = "${WORKDIR}/oci-archive/${BPN}.tar"
K3SVIRT_OCI_IMAGES_DIR = "${localstatedir}/lib/rancher/k3s/agent/images"

python do_oci_archive() {
    import datetime, gzip, hashlib, io, json, os, stat, tarfile

    ref = d.getVar('K3SVIRT_OCI_REF')
    if not ref or ':' not in ref.rsplit('/', 1)[-1]:
        bb.fatal("K3SVIRT_OCI_REF must be a full reference with a tag, e.g. localhost/k3svirt/pause:3.10")
    rootfs = d.getVar('K3SVIRT_OCI_ROOTFS')
    if not os.path.isdir(rootfs) or not os.listdir(rootfs):
        bb.fatal("%s is empty: do_compile must fill K3SVIRT_OCI_ROOTFS" % rootfs)
    epoch = int(d.getVar('SOURCE_DATE_EPOCH'))

    def tar_bytes(entries):
        """entries: (name, type, mode, data, linkname) in order -> tar bytes, owner 0:0, mtime epoch."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT) as tar:
            for name, kind, mode, data, linkname in entries:
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, '', ''
                info.mode, info.type = mode, kind
                if kind == tarfile.SYMTYPE:
                    info.linkname = linkname
                if kind == tarfile.REGTYPE:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.addfile(info)
        return buf.getvalue()

    layer_entries = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        rel = os.path.relpath(dirpath, rootfs)
        if rel != '.':
            layer_entries.append((rel, tarfile.DIRTYPE, stat.S_IMODE(os.lstat(dirpath).st_mode), None, None))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            arc = os.path.normpath(os.path.join(rel, name))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                layer_entries.append((arc, tarfile.SYMTYPE, 0o777, None, os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    layer_entries.append((arc, tarfile.REGTYPE, stat.S_IMODE(st.st_mode), f.read(), None))
            else:
                bb.fatal("%s: only files, directories and symlinks go into an image" % path)
    layer = tar_bytes(layer_entries)
    layer_gz = gzip.compress(layer, compresslevel=9, mtime=0)

    def digest(data):
        return 'sha256:' + hashlib.sha256(data).hexdigest()

    def canon(obj):
        return json.dumps(obj, sort_keys=True, separators=(',', ':')).encode()

    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
    # OCI/Go architecture names of the targets this layer builds for.
    arch = {'x86_64': 'amd64', 'aarch64': 'arm64'}.get(d.getVar('TARGET_ARCH'))
    if not arch:
        bb.fatal("k3svirt_oci_archive: no OCI architecture name for TARGET_ARCH %s" % d.getVar('TARGET_ARCH'))
    image_config = {'Entrypoint': d.getVar('K3SVIRT_OCI_ENTRYPOINT').split()}
    if d.getVar('K3SVIRT_OCI_USER'):
        image_config['User'] = d.getVar('K3SVIRT_OCI_USER')
    config = canon({
        'architecture': arch, 'os': 'linux', 'created': created,
        'config': image_config,
        'rootfs': {'type': 'layers', 'diff_ids': [digest(layer)]},
        'history': [{'created': created, 'created_by': 'meta-k3svirt %s %s' % (d.getVar('PN'), d.getVar('PV'))}],
    })
    manifest = canon({
        'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
        'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': digest(config), 'size': len(config)},
        'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip', 'digest': digest(layer_gz), 'size': len(layer_gz)}],
    })
    index = canon({
        'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
        'manifests': [{'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': digest(manifest),
                       'size': len(manifest),
                       'annotations': {'io.containerd.image.name': ref, 'org.opencontainers.image.ref.name': ref}}],
    })
    blobs = [(b, digest(b).split(':')[1]) for b in (layer_gz, config, manifest)]
    outer = [('blobs', tarfile.DIRTYPE, 0o755, None, None), ('blobs/sha256', tarfile.DIRTYPE, 0o755, None, None)]
    outer += [('blobs/sha256/' + h, tarfile.REGTYPE, 0o644, b, None) for b, h in sorted(blobs, key=lambda x: x[1])]
    outer += [('index.json', tarfile.REGTYPE, 0o644, index, None),
              ('oci-layout', tarfile.REGTYPE, 0o644, canon({'imageLayoutVersion': '1.0.0'}), None)]
    out = d.getVar('K3SVIRT_OCI_ARCHIVE')
    bb.utils.mkdirhier(os.path.dirname(out))
    with open(out, 'wb') as f:
        f.write(tar_bytes(outer))
    bb.note("%s: %s, manifest %s, %d bytes" % (out, ref, digest(manifest), os.path.getsize(out)))
}
do_oci_archive[vardeps] += "K3SVIRT_OCI_REF K3SVIRT_OCI_ENTRYPOINT K3SVIRT_OCI_USER SOURCE_DATE_EPOCH"
do_oci_archive[cleandirs] = "${WORKDIR}/oci-archive"
addtask oci_archive after do_compile before do_install

# The rootfs is filled fresh by each do_compile.
do_compile[cleandirs] += "${K3SVIRT_OCI_ROOTFS}"

k3svirt_oci_install() {
    install -D -m 0644 ${K3SVIRT_OCI_ARCHIVE} ${D}${K3SVIRT_OCI_IMAGES_DIR}/${BPN}.tar
}

FILES:${PN} += "${K3SVIRT_OCI_IMAGES_DIR}/${BPN}.tar"
# The binaries inside the archive are not packaged files: nothing to strip
# or split into -dbg here (the recipes strip them before archiving).
