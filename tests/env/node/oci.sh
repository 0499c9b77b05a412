# oci_layout OUT ROOTFS CONFIG-JSON NAME: packs the directory ROOTFS into a
# one-layer OCI image layout at OUT (made afresh), without Docker:
#   - the layer is a reproducible tar (sorted names, mtime 0, owner 0:0,
#     no atime/ctime) compressed with gzip -n, so the same files always give
#     the same digests;
#   - CONFIG-JSON is the image config's "config" object (Entrypoint, User...);
#   - NAME (e.g. imagebuild.test/pause:3.10.1) is recorded in index.json as
#     io.containerd.image.name, and its tag as org.opencontainers.image.ref.name.
# Prints the manifest digest.
# shellcheck shell=bash

oci_layout() {
	local out="$1" rootfs="$2" config="$3" name="$4"
	local tag="${name##*:}" blobs="$1/blobs/sha256" tmp diff_id layer_digest layer_size
	local config_json config_digest manifest manifest_digest
	rm -rf "$out"
	mkdir -p "$blobs"
	tmp="$out/layer.tar"
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
		--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
		-C "$rootfs" -cf "$tmp" .
	diff_id="$(sha256sum <"$tmp" | cut -d' ' -f1)"
	gzip -n -6 <"$tmp" >"$tmp.gz"
	rm -f "$tmp"
	layer_digest="$(sha256sum <"$tmp.gz" | cut -d' ' -f1)"
	layer_size="$(stat -c %s "$tmp.gz")"
	mv "$tmp.gz" "$blobs/$layer_digest"

	config_json="$(printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"imagebuild tests/env/node/oci.sh"}]}' \
		"$config" "$diff_id")"
	config_digest="$(printf '%s' "$config_json" | sha256sum | cut -d' ' -f1)"
	printf '%s' "$config_json" >"$blobs/$config_digest"

	manifest="$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
		"$config_digest" "${#config_json}" "$layer_digest" "$layer_size")"
	manifest_digest="$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)"
	printf '%s' "$manifest" >"$blobs/$manifest_digest"

	printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
	printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
		"$manifest_digest" "${#manifest}" "$name" "$tag" >"$out/index.json"
	printf 'sha256:%s\n' "$manifest_digest"
}
