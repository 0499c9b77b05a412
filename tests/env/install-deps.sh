#!/usr/bin/env bash
# Installs the Debian packages the test environment needs. Quick when they are
# already there: only packages that dpkg does not report as installed are
# fetched, and the package lists are refreshed only in that case.
#
# None of these packages is run as a Debian service: up.sh starts the binaries
# itself, on loopback, with state under target/testenv. While installing, a
# policy-rc.d that forbids starting services is put in place if the machine has
# none, so no postinst leaves a daemon (e.g. docker-registry on :5000) running.
set -euo pipefail

packages=(
	# etcd for kube-apiserver (see ETCD_VERSION in versions.env)
	etcd-server
	# the second registry (CNCF distribution) and its htpasswd (bcrypt) file
	docker-registry apache2-utils
	# OCI clients used as judges by the tests
	skopeo umoci pigz tar
	# judges the local image store (imagebuild images/tag/rmi) as an OCI image layout
	oci-image-tool
	# certificates, HTTP checks
	openssl curl ca-certificates
	# building Gitea (cgo for sqlite) and general tooling
	gcc libc6-dev git
	# process and port inspection, locking
	iproute2 procps util-linux
	# used by tests of other parts of the project
	lua5.4
	# tests/test.sh lints the shell scripts
	shellcheck
)

missing=()
for p in "${packages[@]}"; do
	# dpkg -s succeeds for removed-but-configured packages too; check the status line.
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done

if ((${#missing[@]} == 0)); then
	exit 0
fi

echo "[install-deps] installing: ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]]; then
	echo "[install-deps] need root for apt-get (missing: ${missing[*]})" >&2
	exit 1
fi

policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\n# temporary: imagebuild tests/env/install-deps.sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	made_policy=1
fi
cleanup() { if ((made_policy)); then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[install-deps] done" >&2
