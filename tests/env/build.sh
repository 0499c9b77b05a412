#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the binaries of the test environment from the Go module proxy into a
# cache outside the repository, so later runs, other clones and CI reuse them:
#
#   ${IMAGEBUILD_TESTENV_CACHE:-$HOME/.cache/imagebuild-testenv}/<component>-<version>/
#
# A component is built only when its directory lacks the `.complete` marker,
# which is written last: an interrupted build is simply done again.
# The machine has two cores, so components are built one after the other.
#
# Usage: build.sh [component...]   (default: all; components: etcd kubernetes gitea helm)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${IMAGEBUILD_TESTENV_CACHE:-$HOME/.cache/imagebuild-testenv}"
mkdir -p "$cache"

log() { printf '[build] %s\n' "$*" >&2; }

# is_built DIR: true when DIR holds a finished build.
is_built() { [[ -f "$1/.complete" ]]; }

# need_build DIR: DIR must be built. The cache is shared by every clone on
# the machine, so builds take a lock (only when something is missing, so a
# cached run never waits) and look again once they hold it.
locked=0
need_build() {
	is_built "$1" && return 1
	if ((!locked)); then
		command -v go >/dev/null || {
			log "the Go toolchain (go) is needed to build $1"
			exit 1
		}
		# Builds must not depend on a GOFLAGS or GOPATH a developer happens
		# to set, and use the module proxy (no vendoring, no workspace).
		export GOFLAGS="-mod=mod -buildvcs=false" GOWORK=off GOTOOLCHAIN=local
		GOPATH="${GOPATH:-$(go env GOPATH)}"
		export GOPATH
		exec 8>"$cache/.build.lock"
		flock 8
		locked=1
	fi
	! is_built "$1"
}

# finish DIR STARTSECONDS: writes the marker (with the build time) last.
finish() {
	local dir="$1" start="$2"
	printf 'built_at=%s\nseconds=%s\n' "$(date -u +%FT%TZ)" "$((SECONDS - start))" >"$dir/.complete"
	log "done: $dir ($((SECONDS - start)) s)"
}

# module_dir MODULE@VERSION: downloads a module's source and prints its directory.
module_dir() {
	go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

# module_time MODULE@VERSION: release time of a module version (used as build date,
# so the same version always reports the same build date).
module_time() {
	local info
	info="$(go mod download -json "$1" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p')"
	sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info"
}

# ---------------------------------------------------------------------------
# etcd: the etcd binary's main package lives in the repository's root module,
# which is not published as a normal module; etcdmain (in server/v3) is. A tiny
# wrapper module calls etcdmain.Main, exactly like etcd's own main.go does.
build_etcd() {
	[[ "$ETCD_VERSION" == debian ]] && return 0 # installed by install-deps.sh
	local out="$cache/etcd-$ETCD_VERSION"
	need_build "$out" || return 0
	log "building etcd $ETCD_VERSION (about a minute)"
	local start=$SECONDS work="$cache/work/etcd-$ETCD_VERSION"
	rm -rf "$work" "$out"
	mkdir -p "$work" "$out/bin"
	cat >"$work/go.mod" <<EOF
module imagebuild.test/etcdwrapper

go 1.24
EOF
	cat >"$work/main.go" <<'EOF'
// Command etcd is etcd's own main, built from the published server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
	(
		cd "$work"
		go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
		go mod tidy
		CGO_ENABLED=0 go build -trimpath \
			-ldflags "-s -w" \
			-o "$out/bin/etcd" .
	)
	rm -rf "$work"
	finish "$out" "$start"
}

# ---------------------------------------------------------------------------
# Kubernetes: `go install k8s.io/kubernetes/cmd/...` fails because the module's
# staging modules (k8s.io/api, k8s.io/client-go, ...) are required as v0.0.0 and
# replaced by local directories. A wrapper module requires k8s.io/kubernetes and
# replaces each staging module with its published v0.Y.Z release instead.
build_kubernetes() {
	local out="$cache/kubernetes-$K8S_VERSION"
	need_build "$out" || return 0
	local start=$SECONDS work="$cache/work/kubernetes-$K8S_VERSION"
	local staging_version="v0.${K8S_VERSION#v1.}"
	local major minor
	major="$(cut -d. -f1 <<<"${K8S_VERSION#v}")"
	minor="$(cut -d. -f2 <<<"${K8S_VERSION#v}")"
	log "building kubernetes $K8S_VERSION (several minutes per binary)"
	rm -rf "$work"
	mkdir -p "$work" "$out/bin"

	# The list of staging modules comes from that version's own go.mod.
	local gomod
	gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
	local -a staging
	mapfile -t staging < <(sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\) => \.\/staging\/src\/.*/\1/p' "$gomod")
	((${#staging[@]} > 10)) || {
		log "could not read the staging modules from $gomod"
		exit 1
	}
	local godebug
	godebug="$(grep -E '^godebug ' "$gomod" || true)"
	{
		echo "module imagebuild.test/kubewrapper"
		echo
		# Same language version and GODEBUG defaults as upstream's own builds.
		grep -E '^go [0-9]' "$gomod"
		[[ -n "$godebug" ]] && echo "$godebug"
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		echo "replace ("
		for m in "${staging[@]}"; do
			echo "	$m => $m $staging_version"
		done
		echo ")"
	} >"$work/go.mod"

	# Version stamping as hack/lib/version.sh does it; without it /version says
	# v0.0.0 and clients (Helm, kubectl skew checks) misbehave.
	local date flags="-s -w"
	date="$(module_time "k8s.io/kubernetes@$K8S_VERSION")"
	local key val
	# A module carries no commit hash, so gitCommit keeps its "$Format:%H$" default.
	for kv in "gitVersion=$K8S_VERSION" "gitMajor=$major" "gitMinor=$minor" \
		"gitTreeState=clean" "buildDate=$date"; do
		key="${kv%%=*}" val="${kv#*=}"
		flags+=" -X k8s.io/component-base/version.$key=$val"
		flags+=" -X k8s.io/client-go/pkg/version.$key=$val"
	done

	# Required binaries first; the node components are optional (a later test
	# suite runs a real node) and must not stop the rest of the environment.
	local -a required=(kube-apiserver kubectl) optional=(kube-controller-manager kube-scheduler kubelet)
	(
		cd "$work"
		for cmd in "${required[@]}" "${optional[@]}"; do
			go get "k8s.io/kubernetes/cmd/$cmd@$K8S_VERSION"
		done
	)
	for cmd in "${required[@]}"; do
		log "  go build $cmd"
		(cd "$work" && CGO_ENABLED=0 go build -trimpath -ldflags "$flags" -o "$out/bin/$cmd" "k8s.io/kubernetes/cmd/$cmd")
	done
	# Upstream builds kubelet with cgo; the control-plane ones without.
	for cmd in "${optional[@]}"; do
		local cgo=0
		[[ "$cmd" == kubelet ]] && cgo=1
		log "  go build $cmd (optional)"
		if ! (cd "$work" && CGO_ENABLED=$cgo go build -trimpath -ldflags "$flags" -o "$out/bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"); then
			log "  $cmd did not build; continuing without it"
			rm -f "$out/bin/$cmd"
		fi
	done
	cp "$work/go.mod" "$out/wrapper.go.mod"
	rm -rf "$work"
	finish "$out" "$start"
}

# ---------------------------------------------------------------------------
# Gitea: its go.mod has replace directives, so `go install` refuses it. The
# module source is copied to a writable directory and built as the main module.
# Without the `bindata` tag Gitea reads templates/ options/ public/ at run time
# from its work path; the copied tree is kept as <out>/share for that.
build_gitea() {
	local out="$cache/gitea-$GITEA_VERSION"
	need_build "$out" || return 0
	local start=$SECONDS
	log "building gitea $GITEA_VERSION (several minutes)"
	local src
	src="$(module_dir "code.gitea.io/gitea@$GITEA_VERSION")"
	rm -rf "$out"
	mkdir -p "$out/bin"
	cp -r "$src" "$out/share"
	chmod -R u+w "$out/share"
	(
		cd "$out/share"
		CGO_ENABLED=1 go build -trimpath \
			-tags 'sqlite sqlite_unlock_notify' \
			-ldflags "-s -w -X 'main.Version=${GITEA_VERSION#v}' -X 'main.Tags=sqlite sqlite_unlock_notify'" \
			-o "$out/bin/gitea" .
	)
	# Only the run-time assets are needed; drop the Go sources to save space.
	find "$out/share" -mindepth 1 -maxdepth 1 \
		! -name templates ! -name options ! -name public -exec rm -rf {} +
	finish "$out" "$start"
}

# ---------------------------------------------------------------------------
# Helm installs from its module as it is; the version is stamped the way its
# Makefile does for a release tag, or `helm version` prints a bare "v3.x"
# and `helm template` assumes a Kubernetes version of its own choosing.
build_helm() {
	local out="$cache/helm-$HELM_VERSION"
	need_build "$out" || return 0
	local start=$SECONDS
	log "building helm $HELM_VERSION"
	rm -rf "$out"
	mkdir -p "$out/bin"
	# Like the Makefile: the default Kubernetes version is the one of the
	# client-go that Helm is built with (v0.Y.Z -> 1.Y).
	local gomod client_go kminor
	gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
	client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"
	kminor="$(cut -d. -f2 <<<"$client_go")"
	local v=helm.sh/helm/v3/internal/version flags
	flags="-s -w -X $v.version=$HELM_VERSION -X $v.metadata= -X $v.gitTreeState=clean"
	for pkg in pkg/lint/rules pkg/chartutil; do
		flags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$kminor"
	done
	GOBIN="$out/bin" CGO_ENABLED=0 go install -trimpath -ldflags "$flags" \
		"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
	finish "$out" "$start"
}

components=("$@")
((${#components[@]})) || components=(etcd kubernetes gitea helm)
for c in "${components[@]}"; do
	case "$c" in
	etcd | kubernetes | gitea | helm) "build_$c" ;;
	*)
		log "unknown component: $c"
		exit 2
		;;
	esac
done
