#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR/..
# Builds what the node needs beyond tests/env/build.sh, from the Go module
# proxy, into the same cache:
#
#   kube-proxy   into kubernetes-$K8S_VERSION/bin, next to kubelet & co., with
#                the same wrapper module (kubernetes-$K8S_VERSION/wrapper.go.mod)
#                and the same version ldflags as build.sh uses
#   node-cri     a tiny CRI client (tests/env/node/node-cri): lists, stops and
#                removes pod sandboxes through containerd's CRI socket, so
#                node-down.sh tears pods down the way kubelet does (CNI DEL
#                included). crictl is not on the module proxy.
#   node-provisioner  the node's tiny hostPath volume provisioner
#                (tests/env/node/node-provisioner)
#
# Each output is rebuilt only when missing (or, for the two tools, when their
# source changed). Takes build.sh's cache lock while building.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/env/versions.env
source "$here/../versions.env"

cache="${IMAGEBUILD_TESTENV_CACHE:-$HOME/.cache/imagebuild-testenv}"
kdir="$cache/kubernetes-$K8S_VERSION"
tools="$cache/node-tools-$K8S_VERSION"

export GOFLAGS="-mod=mod -buildvcs=false" GOWORK=off GOTOOLCHAIN=local
export GOPATH="${GOPATH:-$(go env GOPATH)}"

log() { printf '[node-build] %s\n' "$*" >&2; }

src_sum() { cat "$here/node-cri/main.go" "$here/node-provisioner/main.go" | sha256sum | cut -d' ' -f1; }

need_proxy() { [[ ! -x "$kdir/bin/kube-proxy" ]]; }
need_cri() {
	[[ ! -x "$tools/bin/node-cri" || ! -x "$tools/bin/node-provisioner" ||
		"$(cat "$tools/tools.sum" 2>/dev/null)" != "$(src_sum)" ]]
}

need_proxy || need_cri || exit 0

[[ -f "$kdir/.complete" && -f "$kdir/wrapper.go.mod" ]] || {
	log "$kdir is not built; run tests/env/build.sh first"
	exit 1
}

exec 8>"$cache/.build.lock"
flock 8

work="$cache/work/node-tools-$K8S_VERSION"
rm -rf "$work"
mkdir -p "$work/cmd/node-cri" "$work/cmd/node-provisioner" "$tools/bin"
cp "$kdir/wrapper.go.mod" "$work/go.mod"
cp "$here/node-cri/main.go" "$work/cmd/node-cri/main.go"
cp "$here/node-provisioner/main.go" "$work/cmd/node-provisioner/main.go"

major="$(cut -d. -f1 <<<"${K8S_VERSION#v}")"
minor="$(cut -d. -f2 <<<"${K8S_VERSION#v}")"
info="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p')"
date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")"
flags="-s -w"
for kv in "gitVersion=$K8S_VERSION" "gitMajor=$major" "gitMinor=$minor" \
	"gitTreeState=clean" "buildDate=$date"; do
	flags+=" -X k8s.io/component-base/version.${kv%%=*}=${kv#*=}"
	flags+=" -X k8s.io/client-go/pkg/version.${kv%%=*}=${kv#*=}"
done

(
	cd "$work"
	if need_proxy; then
		start=$SECONDS
		log "building kube-proxy $K8S_VERSION (a few minutes)"
		go get "k8s.io/kubernetes/cmd/kube-proxy@$K8S_VERSION"
		CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o "$kdir/bin/kube-proxy.tmp" k8s.io/kubernetes/cmd/kube-proxy
		mv "$kdir/bin/kube-proxy.tmp" "$kdir/bin/kube-proxy"
		log "kube-proxy built ($((SECONDS - start)) s)"
	fi
	if need_cri; then
		for t in node-cri node-provisioner; do
			log "building $t"
			CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tools/bin/$t.tmp" "./cmd/$t"
			mv "$tools/bin/$t.tmp" "$tools/bin/$t"
		done
		src_sum >"$tools/tools.sum"
	fi
)
rm -rf "$work"
