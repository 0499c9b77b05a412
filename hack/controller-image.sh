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
# Multi-platform: IMAGEBUILD_BINARY_<os>_<arch>[_<variant>]=path (e.g. IMAGEBUILD_BINARY_linux_amd64
# and IMAGEBUILD_BINARY_linux_arm64) names the binary of each platform of the image. Then each gets
# its own context (a binary for this machine's architecture as in 2., with its libraries; one for
# another architecture must be static, and is copied as it is), is built with
# `imagebuild build --output LAYOUT` for its platform, and one OCI layout holding an image index
# of those images (in platform order) is pushed with `imagebuild push LAYOUT:TAG REPOSITORY:TAG`.
# The image holds the platforms named, and only those. imagebuild itself still runs from
# IMAGEBUILD_BINARY or the release build.
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
fail() {
	log "$*"
	exit 2
}

case "$(uname -m)" in
x86_64) platform=linux/amd64 ;;
aarch64) platform=linux/arm64 ;;
*)
	log "unsupported machine $(uname -m)"
	exit 2
	;;
esac

# readelf's name for the machine of an architecture (GOARCH spelling, as in OCI platforms), and
# Rust's for its musl target.
elf_machine() {
	case "$1" in
	amd64) echo "Advanced Micro Devices X86-64" ;;
	arm64) echo "AArch64" ;;
	386) echo "Intel 80386" ;;
	arm) echo "ARM" ;;
	ppc64le) echo "PowerPC64" ;;
	riscv64) echo "RISC-V" ;;
	s390x) echo "IBM S/390" ;;
	*) return 1 ;;
	esac
}
musl_target() {
	case "$1" in
	amd64) echo "x86_64-unknown-linux-musl" ;;
	arm64) echo "aarch64-unknown-linux-musl" ;;
	arm) echo "armv7-unknown-linux-musleabihf" ;;
	*) echo "<arch>-unknown-linux-musl" ;;
	esac
}
interpreter_of() {
	LC_ALL=C readelf -l "$1" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p' || true
}

# The platforms of a multi-platform image, in a fixed order, and their binaries. How each binary
# goes into its context: "dynamic" (this machine's architecture: ldd's libraries and the loader
# come along), "static" (this machine's, no loader) or "foreign" (another architecture, static,
# not stripped: this machine's strip may not know its format).
platforms=()
declare -A platform_binaries=() platform_kinds=()
while read -r name; do
	[[ -n "${!name}" ]] || continue
	IFS=_ read -r os arch variant extra <<<"${name#IMAGEBUILD_BINARY_}"
	for part in "$os" "$arch" ${variant:+"$variant"}; do
		[[ "$part" =~ ^[a-z0-9]+$ ]] || fail "$name: expected IMAGEBUILD_BINARY_<os>_<arch>[_<variant>] in lower case, e.g. IMAGEBUILD_BINARY_linux_arm64"
	done
	[[ -z "$extra" ]] || fail "$name: expected IMAGEBUILD_BINARY_<os>_<arch>[_<variant>], e.g. IMAGEBUILD_BINARY_linux_arm64"
	target="$os/$arch${variant:+/$variant}"
	path="${!name}"
	[[ -f "$path" && -x "$path" ]] || fail "$name: no executable at $path"
	[[ "$os" == linux ]] || fail "$name: the controller image is for linux, not $os"
	if expected="$(elf_machine "$arch")"; then
		machine="$(LC_ALL=C readelf -h "$path" 2>/dev/null | sed -n 's/^ *Machine: *//p' || true)"
		[[ -n "$machine" ]] || fail "$name: $path is not an ELF executable, so it cannot be the $target binary"
		[[ "$machine" == "$expected" ]] || fail "$name: $path is a binary for $machine, not for $target ($expected)"
	else
		log "$name: cannot check that $path is for $arch (not one of the architectures this script knows); taking it as it is"
	fi
	interpreter="$(interpreter_of "$path")"
	if [[ "$os/$arch" == "$platform" && -n "$interpreter" ]]; then
		platform_kinds[$target]=dynamic
	elif [[ "$os/$arch" == "$platform" ]]; then
		platform_kinds[$target]=static
	elif [[ -z "$interpreter" ]]; then
		platform_kinds[$target]=foreign
	else
		fail "$name: $path is dynamically linked (it asks for the loader $interpreter), and this machine ($platform) cannot collect the shared libraries of a $target binary; build it static, e.g. with the musl target: cargo build --release --target $(musl_target "$arch")"
	fi
	platform_binaries[$target]="$path"
done < <(compgen -e | grep '^IMAGEBUILD_BINARY_' || true)
if ((${#platform_binaries[@]} > 0)); then
	mapfile -t platforms < <(printf '%s\n' "${!platform_binaries[@]}" | LC_ALL=C sort)
fi

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

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# make_context DIR BINARY KIND: the context of BINARY, going in as KIND says (see above).
make_context() {
	local context="$1" binary="$2" kind="$3" library interpreter libraries=0
	mkdir -p "$context/usr/local/bin" "$context/etc/ssl/certs"
	install -m 0755 "$binary" "$context/usr/local/bin/imagebuild"
	# The release profile keeps line tables for backtraces on the host; the image keeps symbols
	# only (a fifth of the size, so nodes pull it in a fraction of the time).
	[[ "$kind" == foreign ]] || strip --strip-debug "$context/usr/local/bin/imagebuild"

	if [[ "$kind" == dynamic ]]; then
		# Libraries at the paths ldd resolves them to (the loader at the path the binary names).
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
	fi

	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$context/etc/passwd"
	printf 'root:x:0:\nnonroot:x:65532:\n' >"$context/etc/group"
	if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
		cp /etc/ssl/certs/ca-certificates.crt "$context/etc/ssl/certs/ca-certificates.crt"
	fi
	local size
	size="$(stat -c %s "$context/usr/local/bin/imagebuild")"
	case "$kind" in
	dynamic) log "context: imagebuild ($size bytes), $libraries libraries, loader $interpreter" ;;
	static) log "context: imagebuild ($size bytes), static" ;;
	foreign) log "context: imagebuild ($size bytes), static, not stripped" ;;
	esac
}

# write_spec PLATFORM FILE: the spec with the registry, tag and platform filled in.
write_spec() {
	sed -e "s|$spec_repository|$repository|" \
		-e "s|tags: \[\"[^\"]*\"\]|tags: [\"$tag\"]|" \
		-e "s|platform: linux/amd64|platform: $1|" \
		"$spec" >"$2"
}

if ((${#platforms[@]} == 0)); then
	make_context "$work/context" "$binary" dynamic
	write_spec "$platform" "$work/imagebuild.yaml"
	log "imagebuild build --push -> $repository:$tag"
	printf '%s' "$password" |
		env -u SOURCE_DATE_EPOCH "$binary" build -f "$work/imagebuild.yaml" --context "$work/context" --push "${registry_flags[@]}"
	exit 0
fi

# One layout per platform, then one layout with the index of them all.
built=()
for i in "${!platforms[@]}"; do
	target="${platforms[$i]}"
	dir="$work/platform-$i"
	log "$target: ${platform_binaries[$target]}"
	make_context "$dir/context" "${platform_binaries[$target]}" "${platform_kinds[$target]}"
	write_spec "$target" "$dir/imagebuild.yaml"
	env -u SOURCE_DATE_EPOCH "$binary" build -f "$dir/imagebuild.yaml" --context "$dir/context" --output "$dir/layout" >&2
	built+=("$target" "$dir/layout")
done

# The index JSON is compact with its keys in a fixed order (that of imagebuild's own indexes), so
# the same children always give the same index digest.
python3 - "$work/index" "$tag" "${built[@]}" <<'PY'
import hashlib
import json
import os
import shutil
import sys

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def fail(message):
    print(f"controller-image: {message}", file=sys.stderr)
    sys.exit(1)


def compact(value):
    return json.dumps(value, separators=(",", ":")).encode()


def blob_path(layout, digest):
    algorithm, hex_digest = digest.split(":", 1)
    return os.path.join(layout, "blobs", algorithm, hex_digest)


def read_json(path):
    with open(path, "rb") as f:
        return json.load(f)


out, tag, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs)
manifests = []
for target, layout in zip(pairs[0::2], pairs[1::2]):
    entries = [
        e
        for e in read_json(os.path.join(layout, "index.json"))["manifests"]
        if e.get("annotations", {}).get(REF_NAME) == tag
    ]
    if len(entries) != 1 or entries[0]["mediaType"] != MANIFEST:
        fail(f"{layout} should hold one image manifest tagged {tag}; it has {entries}")
    entry = entries[0]
    manifest = read_json(blob_path(layout, entry["digest"]))
    config = read_json(blob_path(layout, manifest["config"]["digest"]))
    os_name, architecture, *variant = target.split("/")
    platform = {"architecture": architecture, "os": os_name}
    if variant:
        platform["variant"] = variant[0]
    said = {k: config[k] for k in ("architecture", "os", "variant") if k in config}
    if said != platform:
        fail(f"the {target} image's config says {said}")
    source = os.path.join(layout, "blobs", "sha256")
    for name in sorted(os.listdir(source)):
        if not os.path.exists(os.path.join(blobs, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(blobs, name))
    manifests.append(
        {
            "mediaType": entry["mediaType"],
            "digest": entry["digest"],
            "size": entry["size"],
            "platform": platform,
        }
    )

index = compact({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests})
digest = "sha256:" + hashlib.sha256(index).hexdigest()
with open(blob_path(out, digest), "wb") as f:
    f.write(index)
entry = {
    "mediaType": INDEX,
    "digest": digest,
    "size": len(index),
    "annotations": {REF_NAME: tag},
}
with open(os.path.join(out, "index.json"), "wb") as f:
    f.write(compact({"schemaVersion": 2, "mediaType": INDEX, "manifests": [entry]}))
with open(os.path.join(out, "oci-layout"), "wb") as f:
    f.write(compact({"imageLayoutVersion": "1.0.0"}))
print(f"controller-image: index {digest} of {len(manifests)} images", file=sys.stderr)
PY

log "imagebuild push -> $repository:$tag (${platforms[*]})"
printf '%s' "$password" | "$binary" push "$work/index:$tag" "$repository:$tag" "${registry_flags[@]}"
