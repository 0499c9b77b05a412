#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Makes the node tests' images without Docker and pushes them to the test
# Gitea with skopeo, trusting only Gitea's certificate:
#
#   $IMAGEBUILD_TEST_GITEA/<owner>/busybox:1          Debian's busybox-static,
#        /bin/busybox and a symlink per applet, /etc/passwd with nonroot
#        (65532), /tmp; user 65532:65532
#   $IMAGEBUILD_TEST_GITEA/<owner>/kubectl:$K8S_VERSION  the pinned kubectl
#        (static), user 65532:65532; an in-cluster client for the tests
#
# The layouts are reproducible (tests/env/node/oci.sh), so a push is skipped
# when Gitea already serves the same manifest digest. Needs target/testenv/env.sh
# (up.sh) and the packages busybox-static and skopeo (node-up.sh installs them).
# Prints nothing on success but the image references, one a line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
# shellcheck source=../lib.sh
source "$here/../lib.sh"
# shellcheck source=oci.sh
source "$here/oci.sh"

# shellcheck disable=SC1091
source "$state/env.sh"
images="$cache/node-images"
mkdir -p "$images"

common_files() { # ROOTFS
	mkdir -p "$1/etc" "$1/tmp"
	chmod 1777 "$1/tmp"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nnonroot:x:65532:65532:nonroot:/tmp:/bin/sh\n' >"$1/etc/passwd"
	printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$1/etc/group"
	chmod 644 "$1/etc/passwd" "$1/etc/group"
}

# build NAME KEY ROOTFS-FUNCTION CONFIG-JSON -> layout dir (cached by NAME-KEY)
build() {
	local name="$1" fill="$3" config="$4" out="$images/$1-$2"
	if [[ ! -f "$out/.complete" ]]; then
		local rootfs
		rootfs="$(mktemp -d)"
		"$fill" "$rootfs"
		oci_layout "$out" "$rootfs" "$config" "$name" >"$out.digest"
		rm -rf "$rootfs"
		mv "$out.digest" "$out/digest"
		touch "$out/.complete"
	fi
	printf '%s' "$out"
}

fill_busybox() {
	local r="$1" applet
	common_files "$r"
	mkdir -p "$r/bin"
	cp /bin/busybox "$r/bin/busybox"
	chmod 755 "$r/bin/busybox"
	while read -r applet; do
		[[ "$applet" == bin/busybox ]] && continue
		mkdir -p "$r/$(dirname "$applet")"
		ln -sf /bin/busybox "$r/$applet"
	done < <(/bin/busybox --list-full)
}

fill_kubectl() {
	local r="$1"
	common_files "$r"
	mkdir -p "$r/usr/local/bin"
	cp "$kube_bin/kubectl" "$r/usr/local/bin/kubectl"
	chmod 755 "$r/usr/local/bin/kubectl"
}

certs="$(mktemp -d)"
trap 'rm -rf "$certs"' EXIT
cp "$IMAGEBUILD_TEST_GITEA_CA" "$certs/ca.crt"

# push LAYOUT REF: copies the layout to Gitea unless it has that manifest already.
push() {
	local layout="$1" ref="$2" want have
	want="$(cat "$layout/digest")"
	# Only Gitea's certificate is trusted: no system roots (SSL_CERT_*), and
	# the certificate directory for skopeo itself.
	have="$(SSL_CERT_FILE="$certs/ca.crt" SSL_CERT_DIR="$certs" skopeo inspect --raw \
		--cert-dir "$certs" --creds "$IMAGEBUILD_TEST_GITEA_USER:$IMAGEBUILD_TEST_GITEA_PASSWORD" \
		"docker://$ref" 2>/dev/null | sha256sum | cut -d' ' -f1)" || true
	if [[ "sha256:$have" != "$want" ]]; then
		SSL_CERT_FILE="$certs/ca.crt" SSL_CERT_DIR="$certs" skopeo copy --quiet \
			--dest-cert-dir "$certs" \
			--dest-creds "$IMAGEBUILD_TEST_GITEA_USER:$IMAGEBUILD_TEST_GITEA_PASSWORD" \
			"oci:$layout" "docker://$ref" >&2
	fi
	printf '%s\n' "$ref"
}

bb_key="$(dpkg-query -W -f='${Version}' busybox-static | tr -c 'A-Za-z0-9.\n' '_')"
bb="$(build busybox "$bb_key" fill_busybox \
	'{"User":"65532:65532","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"}')"
kc_key="$K8S_VERSION-$(sha256sum <"$kube_bin/kubectl" | cut -c1-12)"
kc="$(build kubectl "$kc_key" fill_kubectl \
	'{"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin","HOME=/tmp"],"Entrypoint":["/usr/local/bin/kubectl"],"WorkingDir":"/"}')"

push "$bb" "$IMAGEBUILD_TEST_GITEA/$IMAGEBUILD_TEST_GITEA_OWNER/busybox:1"
push "$kc" "$IMAGEBUILD_TEST_GITEA/$IMAGEBUILD_TEST_GITEA_OWNER/kubectl:$K8S_VERSION"
