#!/bin/bash -e
# Host side: hand the wardtap source distribution (built by `make -C image dist`) to the
# chroot step, which builds the venv from it on the target architecture.
shopt -s nullglob
dists=(../files/dist/wardtap-*.tar.gz)
if [ "${#dists[@]}" -ne 1 ]; then
	echo "stage-wardtap: expected one wardtap sdist in files/dist/ (run make -C image dist)" >&2
	exit 1
fi
install -d -m 0755 "${ROOTFS_DIR:?}/tmp/wardtap-dist"
install -m 0644 "${dists[0]}" "${ROOTFS_DIR}/tmp/wardtap-dist/"
install -m 0644 ../files/requirements-image.txt "${ROOTFS_DIR}/tmp/wardtap-dist/"
