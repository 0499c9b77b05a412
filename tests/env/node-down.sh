#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops the test node that node-up.sh started, leaving no process behind:
# the kubelet first (so it restarts nothing), then every Pod through
# containerd's CRI (which tears their network down through CNI), then
# kube-proxy, the scheduler, the controller manager, the provisioner, the
# forwarders and the DNS, then containerd (and any shim or container that
# outlived it). Unmounts whatever is still mounted under target/testenv/node,
# removes kube-proxy's and node-up.sh's iptables rules, the pod bridge and
# target/testenv/node.sh, and gives ip_forward back its earlier value.
# Harmless when nothing runs. up.sh's environment is left alone.
#
# Usage: node-down.sh           stop (images, volumes and certificates are kept)
#        node-down.sh --purge   also remove target/testenv/node
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=node/lib.sh
source "$here/node/lib.sh"

[[ -d "$node_dir" || -d "$machine_dir" ]] || exit 0
mkdir -p "$machine_dir"
exec 9>"$machine_lock"
flock 9

owner="$(cat "$machine_owner" 2>/dev/null || true)"
# The machine-wide parts (iptables, the bridge) are ours to clean up only when
# no other clone's node owns the machine.
mine=0
[[ -z "$owner" || "$owner" == "$state" ]] && mine=1

stop_component node-kubelet

if is_running node-containerd && [[ -x "$node_tools/node-cri" ]]; then
	"$node_tools/node-cri" -socket "$containerd_sock" -timeout 90s cleanup >&2 ||
		log "some pods could not be removed through CRI; cleaning up below"
fi

stop_component node-proxy node-scheduler node-controller-manager node-provisioner \
	node-api-forward node-gitea-forward node-dns
stop_component node-containerd

# Shims and containers that outlived containerd (e.g. after a crash).
runc_root="$containerd_dir/runc/k8s.io"
if [[ -d "$runc_root" ]]; then
	for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
		log "removing leftover container $id"
		runc --root "$runc_root" delete --force "$id" 2>/dev/null || true
	done
fi
for p in /proc/[0-9]*; do
	pid="${p#/proc/}"
	[[ "$(readlink "$p/exe" 2>/dev/null)" == */containerd-shim-runc-v2 ]] || continue
	if grep -qxF "$containerd_sock" <<<"$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null)"; then
		log "killing leftover shim $pid"
		kill -KILL "$pid" 2>/dev/null || true
	fi
done

# Mounts under the node's directory, deepest first (pod volumes, overlay
# snapshots, sandbox shm).
if [[ -d "$node_dir" ]]; then
	for _ in 1 2 3; do
		mapfile -t mounts < <(awk -v d="$node_dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
		((${#mounts[@]})) || break
		for m in "${mounts[@]}"; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done
	done
fi

# kube-proxy's iptables rules, then ours.
if ((mine)) && [[ -x "$kube_bin/kube-proxy" ]] && grep -q '^-N KUBE-SERVICES' <<<"$(iptables -w -t nat -S 2>/dev/null)"; then
	"$kube_bin/kube-proxy" --cleanup --v=0 >/dev/null 2>&1 || log "kube-proxy --cleanup failed"
fi
# What --cleanup leaves (the KUBE-FIREWALL hooks of INPUT and OUTPUT, IPv4 and
# IPv6) and ours: every rule jumping to a KUBE-* or IMAGEBUILD-NODE-* chain,
# then the chains. Only one test node runs per machine, and nothing else here
# runs Kubernetes.
remove_chains() { # iptables|ip6tables
	local cmd="$1" table rule chain
	command -v "$cmd" >/dev/null || return 0
	for table in filter nat mangle raw; do
		"$cmd" -w -t "$table" -S >/dev/null 2>&1 || continue
		while read -r rule; do
			eval "$cmd -w -t $table -D ${rule#-A }" 2>/dev/null || true
		done < <("$cmd" -w -t "$table" -S | grep -E '^-A .* -j (KUBE-|IMAGEBUILD-NODE-)')
		for chain in $("$cmd" -w -t "$table" -S | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^IMAGEBUILD-NODE-/) { print $2 }'); do
			"$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true
		done
		for chain in $("$cmd" -w -t "$table" -S | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^IMAGEBUILD-NODE-/) { print $2 }'); do
			"$cmd" -w -t "$table" -X "$chain" 2>/dev/null || log "could not remove $cmd chain $table/$chain"
		done
	done
}
if ((mine)); then
	remove_chains iptables
	remove_chains ip6tables

	ip link del "$NODE_BRIDGE" 2>/dev/null || true
	if [[ -f "$machine_dir/ip_forward.orig" ]]; then
		sysctl -qw "net.ipv4.ip_forward=$(cat "$machine_dir/ip_forward.orig")" || true
		rm -f "$machine_dir/ip_forward.orig"
	fi
	# In place (cat >), as /etc/hosts may be a bind mount that sed -i cannot replace.
	if grep -q " $NODE_NAME  # imagebuild tests/env/node\$" /etc/hosts; then
		hosts="$(grep -v " $NODE_NAME  # imagebuild tests/env/node\$" /etc/hosts)"
		printf '%s\n' "$hosts" >/etc/hosts
	fi
	rm -f "$machine_owner"
fi
# Log links the kubelet made for our Pods.
for l in /var/log/containers/*.log; do
	[[ -L "$l" && "$(readlink "$l")" == "$node_dir/"* ]] && rm -f "$l"
done
rm -f "$state/node.sh"

if [[ "${1:-}" == --purge ]]; then
	log "removing $node_dir"
	rm -rf "$node_dir"
fi
log "node stopped"
