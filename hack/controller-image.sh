#!/usr/bin/env bash
# Builds the controller's image with imagebuild itself and pushes it; prints the pushed reference
# (registry/owner/imagebuild@sha256:...) on stdout, which the chart takes as image.digest.
#
#   1. cargo build --release (skipped with IMAGEBUILD_BINARY=path/to/imagebuild);
#   2. a context directory: the binary at /usr/local/bin/imagebuild (debug info stripped), every
#      shared library `ldd` lists and the dynamic loader at the paths `ldd` shows, /etc/passwd and
#      /etc/group with the user 65532 ("nonroot"), and the host's CA bundle (for registries with
#      public certificates);
#   3. imagebuild build -f images/controller/imagebuild.yaml --context DIR --push, with the
#      registry, tag and platform filled in, trusting only the registry's own certificate.
#
# Registry, in this order:
#   IMAGEBUILD_IMAGE_REPOSITORY=host:port/owner/name  plus IMAGEBUILD_CA_FILE, IMAGEBUILD_USERNAME and
#       IMAGEBUILD_PASSWORD (any of them may be empty);
#   the test Gitea of target/testenv/env.sh (tests/env/up.sh), when it exists;
#   else idpbuilder's Gitea, gitea.cnoe.localtest.me:8443/giteaadmin/imagebuild, with its
#       certificate and credentials read from the current kube context (--from-cluster).
# IMAGEBUILD_IMAGE_TAG overrides the tag (default: the crate version).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
spec="$repo/images/controller/imagebuild.yaml"
spec_repository="gitea.cnoe.localtest.me:8443/giteaadmin/imagebuild"

log() { printf 'controller-image: %s\n' "$*" >&2; }

binary="${IMAGEBUILD_BINARY:-}"
if [[ -z "$binary" ]]; then
	log "cargo build --release"
	(cd "$repo" && cargo build --release --bin imagebuild >&2)
	binary="$repo/target/release/imagebuild"
fi
[[ -x "$binary" ]] || {
	log "no executable at $binary"
	exit 2
}

registry_flags=()
repository="${IMAGEBUILD_IMAGE_REPOSITORY:-}"
password=""
if [[ -n "$repository" ]]; then
	[[ -n "${IMAGEBUILD_CA_FILE:-}" ]] && registry_flags+=(--ca-file "$IMAGEBUILD_CA_FILE")
	if [[ -n "${IMAGEBUILD_USERNAME:-}" ]]; then
		registry_flags+=(--username "$IMAGEBUILD_USERNAME" --password-stdin)
		password="${IMAGEBUILD_PASSWORD:-}"
	fi
elif [[ -f "$repo/target/testenv/env.sh" ]]; then
	# shellcheck disable=SC1091
	source "$repo/target/testenv/env.sh"
	repository="$IMAGEBUILD_TEST_GITEA/$IMAGEBUILD_TEST_GITEA_OWNER/imagebuild"
	registry_flags+=(--ca-file "$IMAGEBUILD_TEST_GITEA_CA" --username "$IMAGEBUILD_TEST_GITEA_USER" --password-stdin)
	password="$IMAGEBUILD_TEST_GITEA_PASSWORD"
else
	repository="$spec_repository"
	registry_flags+=(--from-cluster)
fi

tag="${IMAGEBUILD_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)}"
case "$(uname -m)" in
x86_64) platform=linux/amd64 ;;
aarch64) platform=linux/arm64 ;;
*)
	log "unsupported machine $(uname -m)"
	exit 2
	;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
context="$work/context"
mkdir -p "$context/usr/local/bin" "$context/etc/ssl/certs"
install -m 0755 "$binary" "$context/usr/local/bin/imagebuild"
# The release profile keeps line tables for backtraces on the host; the image keeps symbols only
# (a fifth of the size, so nodes pull it in a fraction of the time).
strip --strip-debug "$context/usr/local/bin/imagebuild"

# Libraries at the paths ldd resolves them to (the loader at the path the binary names).
libraries=0
while read -r library; do
	mkdir -p "$context$(dirname "$library")"
	cp -L "$library" "$context$library"
	chmod 0755 "$context$library"
	libraries=$((libraries + 1))
done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
interpreter="$(readelf -l "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
[[ -n "$interpreter" && -f "$context$interpreter" ]] || {
	log "the dynamic loader $interpreter is not in the context"
	exit 1
}

printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$context/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$context/etc/group"
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
	cp /etc/ssl/certs/ca-certificates.crt "$context/etc/ssl/certs/ca-certificates.crt"
fi
log "context: imagebuild ($(stat -c %s "$context/usr/local/bin/imagebuild") bytes), $libraries libraries, loader $interpreter"

sed -e "s|$spec_repository|$repository|" \
	-e "s|tags: \[\"[^\"]*\"\]|tags: [\"$tag\"]|" \
	-e "s|platform: linux/amd64|platform: $platform|" \
	"$spec" >"$work/imagebuild.yaml"

log "imagebuild build --push -> $repository:$tag"
printf '%s' "$password" |
	env -u SOURCE_DATE_EPOCH "$binary" build -f "$work/imagebuild.yaml" --context "$context" --push "${registry_flags[@]}"
