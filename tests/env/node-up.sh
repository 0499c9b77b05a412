#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Turns the API server of up.sh into a real single-node cluster, on this
# machine, and writes target/testenv/node.sh:
#
#   containerd + runc (Debian)  own config, root, state and socket under
#                               target/testenv/node/containerd; CRI with
#                               restrict_oom_score_adj (no CAP_SYS_RESOURCE),
#                               cgroupfs, the project's own pause image, and a
#                               hosts dir that trusts Gitea's certificate
#   pause image                 pause.c of the pinned k8s.io/kubernetes module,
#                               gcc -static, packed by tests/env/node/oci.sh,
#                               imported with ctr
#   CNI                         bridge ibnode0 (10.244.0.1/24, made here) +
#                               host-local + portmap, loopback by containerd
#   kubelet                     KubeletConfiguration in node/kubelet.yaml
#   kube-scheduler, kube-proxy (iptables), kube-controller-manager (the
#                               controllers a node needs that up.sh's does not run)
#   node-dns (dnsmasq)          on 10.244.0.1:53, the Pods' nameserver:
#                               *.cnoe.localtest.me -> 10.244.0.1, kubernetes.default
#   node-gitea-forward (socat)  10.244.0.1:<gitea port> -> Gitea on 127.0.0.1
#   node-api-forward (socat)    the `kubernetes` Service's endpoint -> the API
#                               server on 127.0.0.1 (it listens on loopback only)
#   node-provisioner            default StorageClass imagebuild-hostpath: hostPath
#                               volumes under node/volumes, RWO and RWX
#   test images                 busybox:1 and kubectl:<version> in Gitea
#                               (tests/env/node/test-images.sh)
#
# Pods reach Gitea at https://gitea.cnoe.localtest.me:<port> (the same
# reference as on the host: the node's DNS points the name to the bridge
# address, where the forwarder listens), and the API server through the
# `kubernetes` Service with their ServiceAccount token, as in any cluster.
#
# Needs up.sh's environment (runs up.sh when it is not up). Idempotent and
# quick when everything is already up. One test node per machine.
#
# Usage: node-up.sh          bring the node up
#        node-up.sh --check  exit 0 when the node is up, Ready and node.sh written
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=node/lib.sh
source "$here/node/lib.sh"
# shellcheck source=node/oci.sh
source "$here/node/oci.sh"

kubectl_admin() { KUBECONFIG="$state/kubeconfig" "$kube_bin/kubectl" "$@"; }

# ---------------------------------------------------------------------------
# Health checks (short timeouts, so --check is quick).

node_containerd_healthy() { ctr --address "$containerd_sock" --timeout 3s version >/dev/null 2>&1; }
node_kubelet_healthy() {
	local p
	p="$(saved_port node-kubelet-healthz)" || return 1
	[[ "$(curl -sS --max-time 3 "http://127.0.0.1:$p/healthz" 2>/dev/null)" == ok ]]
}
node_proxy_healthy() {
	local p
	p="$(saved_port node-proxy-healthz)" || return 1
	curl -fsS --max-time 3 "http://127.0.0.1:$p/healthz" >/dev/null 2>&1
}
node_scheduler_healthy() {
	local p
	p="$(saved_port node-scheduler)" || return 1
	[[ "$(curl -sS --max-time 3 --cacert "$node_pki/ca.crt" "https://127.0.0.1:$p/healthz" 2>/dev/null)" == ok ]]
}
node_controller_manager_healthy() {
	local p
	p="$(saved_port node-controller-manager)" || return 1
	[[ "$(curl -sS --max-time 3 --cacert "$node_pki/ca.crt" "https://127.0.0.1:$p/healthz" 2>/dev/null)" == ok ]]
}
node_provisioner_healthy() { true; }
node_dns_healthy() { true; }
node_gitea_forward_healthy() { true; }
node_api_forward_healthy() { true; }

# Every component is started as `exe_NAME` with the arguments `args_NAME`
# prints, one a line. Ports, the endpoint and the controller list come from
# the environment as it is now, so a component whose command line differs
# from what it would get now (up.sh restarted Gitea on another port, say)
# is out of date; so is one whose configuration file changed (changed/NAME).
args_current() {
	local pid
	pid="$(pid_of "$1")" || return 1
	[[ "$(tr '\0' '\n' <"/proc/$pid/cmdline" | tail -n +2)" == "$("args_${1//-/_}")" ]]
}
up_to_date() { args_current "$1" && [[ ! -e "$node_dir/changed/$1" ]]; }

component_ok() { is_running "$1" && up_to_date "$1" && "${1//-/_}_healthy"; }

start_component() { # NAME
	local args pid
	mapfile -t args < <("args_${1//-/_}")
	launch "$1" "$("exe_${1//-/_}")" "${args[@]}"
	# launch records the pid of the forked shell; until that has exec'd the
	# program, pid_of (which checks /proc/PID/exe) says it is not running and
	# wait_healthy would report it dead. Wait for the exec.
	pid="$(head -n1 "$state/run/$1.pid")"
	for _ in $(seq 100); do
		is_running "$1" && return 0
		[[ -d "/proc/$pid" ]] || return 0
		sleep 0.05
	done
}

node_ready() {
	[[ "$(kubectl_admin get node "$NODE_NAME" --request-timeout=5s \
		-o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

wanted_components() {
	echo node-containerd node-dns node-gitea-forward
	api_forward_needed && echo node-api-forward
	echo node-kubelet node-scheduler
	[[ -n "$(kcm_controllers)" ]] && echo node-controller-manager
	echo node-proxy node-provisioner
}

check_all() {
	local c
	"$here/up.sh" --check || return 1
	[[ -f "$node_dir/args/node-api-forward.mode" ]] || return 1
	for c in $(wanted_components); do
		component_ok "$c" || return 1
	done
	node_ready && [[ -f "$state/node.sh" ]]
}

# ---------------------------------------------------------------------------
# The endpoint of the `kubernetes` Service. kube-apiserver advertises the
# address of the host's default interface (it binds 127.0.0.1 only, and then
# picks that address), so Pods whose traffic kube-proxy sends there would
# find nothing listening. node-api-forward listens on exactly that address and
# port, accepts only the pod network, and forwards to the API server on
# loopback. Were the endpoint a loopback address, route_localnet on the bridge
# would do instead; were the API server listening there already, nothing.
api_endpoint() {
	kubectl_admin get endpointslice kubernetes -n default --request-timeout=5s \
		-o jsonpath='{.endpoints[0].addresses[0]} {.ports[0].port}' 2>/dev/null
}

api_forward_needed() { [[ "$(cat "$node_dir/args/node-api-forward.mode" 2>/dev/null)" == forward ]]; }

decide_api_forward() {
	local ep ip port
	ep="$(api_endpoint)"
	read -r ip port <<<"$ep"
	[[ -n "$ip" && -n "$port" ]] || die "cannot read the endpoint of the kubernetes Service"
	mkdir -p "$node_dir/args"
	printf '%s %s\n' "$ip" "$port" >"$node_dir/args/api-endpoint"
	if [[ "$ip" == 127.* ]]; then
		sysctl -qw "net.ipv4.conf.$NODE_BRIDGE.route_localnet=1"
		echo loopback >"$node_dir/args/node-api-forward.mode"
	elif ! is_running node-api-forward &&
		curl -sk --max-time 3 -o /dev/null "https://$ip:$port/readyz" 2>/dev/null; then
		echo direct >"$node_dir/args/node-api-forward.mode"
	else
		echo forward >"$node_dir/args/node-api-forward.mode"
	fi
}

# ---------------------------------------------------------------------------
# Machine prerequisites.

packages=(containerd runc containernetworking-plugins iptables conntrack socat
	busybox-static dnsmasq-base skopeo gcc libc6-dev ethtool)

install_packages() {
	local p missing=()
	for p in "${packages[@]}"; do
		[[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == *"install ok installed"* ]] || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	log "installing: ${missing[*]}"
	[[ $(id -u) -eq 0 ]] || die "need root for apt-get (missing: ${missing[*]})"
	# No package may start its service (containerd's would take /run/containerd).
	local policy=/usr/sbin/policy-rc.d made=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\n# temporary: imagebuild tests/env/node-up.sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		made=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
		{
			((made)) && rm -f "$policy"
			die "apt-get install failed"
		}
	((made)) && rm -f "$policy"
	return 0
}

# At most one test node per machine (see node/lib.sh).
claim_machine() {
	mkdir -p "$machine_dir"
	local owner
	owner="$(cat "$machine_owner" 2>/dev/null || true)"
	if [[ -n "$owner" && "$owner" != "$state" && -d "$owner/run" ]]; then
		local f pid exe
		f="$owner/run/node-kubelet.pid"
		if [[ -f "$f" ]] && { read -r pid && read -r exe; } <"$f" &&
			[[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]]; then
			die "the test node of $owner runs on this machine; stop it first with its tests/env/node-down.sh"
		fi
	fi
	printf '%s\n' "$state" >"$machine_owner"
}

setup_network() {
	[[ -f "$machine_dir/ip_forward.orig" ]] || cat /proc/sys/net/ipv4/ip_forward >"$machine_dir/ip_forward.orig"
	sysctl -qw net.ipv4.ip_forward=1
	[[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] &&
		sysctl -qw net.bridge.bridge-nf-call-iptables=1
	if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
		ip link add "$NODE_BRIDGE" type bridge
	fi
	[[ "$(ip -4 -o addr show dev "$NODE_BRIDGE")" == *" inet $NODE_IP/"* ]] ||
		ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$NODE_BRIDGE"
	ip link set "$NODE_BRIDGE" up
	# The node's name resolves to its address (the API server reaches the
	# kubelet by the node's Hostname address first).
	if [[ "$(getent ahostsv4 "$NODE_NAME" 2>/dev/null | awk 'NR == 1 { print $1 }')" != "$NODE_IP" ]]; then
		local hosts
		hosts="$(grep -v " $NODE_NAME  # imagebuild tests/env/node\$" /etc/hosts || true)"
		printf '%s\n' "$hosts" >/etc/hosts
		printf '%s %s  # imagebuild tests/env/node\n' "$NODE_IP" "$NODE_NAME" >>/etc/hosts
	fi
	# Pods stay on this machine: nothing from the pod bridge is forwarded to
	# another interface (no route out, no masquerading), and no Pod talks to
	# the kubelet's port (its API is open to the API server, see kubelet).
	iptables -w -N "$FW_FORWARD" 2>/dev/null || iptables -w -F "$FW_FORWARD"
	iptables -w -A "$FW_FORWARD" -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
	iptables -w -A "$FW_FORWARD" -o "$NODE_BRIDGE" ! -i "$NODE_BRIDGE" -j DROP
	iptables -w -C FORWARD -j "$FW_FORWARD" 2>/dev/null || iptables -w -I FORWARD 1 -j "$FW_FORWARD"
	iptables -w -N "$FW_INPUT" 2>/dev/null || iptables -w -F "$FW_INPUT"
	iptables -w -A "$FW_INPUT" -i "$NODE_BRIDGE" -p tcp --dport "$(saved_port node-kubelet)" -j DROP
	iptables -w -C INPUT -j "$FW_INPUT" 2>/dev/null || iptables -w -I INPUT 1 -j "$FW_INPUT"
}

# ---------------------------------------------------------------------------
# PKI: client and serving certificates signed by the environment's CA.

# mark_changed NAME...: NAME must restart to pick up a new file.
mark_changed() {
	mkdir -p "$node_dir/changed"
	local n
	for n in "$@"; do touch "$node_dir/changed/$n"; done
}

# install_file FILE NAME...: stdin becomes FILE; when that changes FILE, the
# components NAME... are marked for a restart.
install_file() {
	local f="$1" tmp
	shift
	mkdir -p "$(dirname "$f")"
	tmp="$(mktemp "$f.XXXX")"
	cat >"$tmp"
	if cmp -s "$tmp" "$f"; then
		rm -f "$tmp"
	else
		mv "$tmp" "$f"
		(($# == 0)) || mark_changed "$@"
	fi
	return 0
}

pki_users=(node-kubelet node-scheduler node-controller-manager node-proxy node-provisioner)

signed_by_ca() { openssl verify -CAfile "$pki/ca.crt" "$1" >/dev/null 2>&1; }

node_cert() { # NAME SUBJECT EKU SANS
	local f="$node_pki/$1"
	cert_valid "$f.crt" && signed_by_ca "$f.crt" && return 0
	make_leaf "$pki/ca" "$f" "$2" "$3" "$4"
	mark_changed "${pki_users[@]}"
}

write_node_kubeconfig() { # NAME
	local port
	port="$(saved_port apiserver)"
	install_file "$node_pki/$1.kubeconfig" "${pki_users[@]}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: imagebuild-testenv
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $node_pki/$1.crt
    client-key: $node_pki/$1.key
contexts:
- name: imagebuild-testenv
  context: {cluster: imagebuild-testenv, user: $1}
current-context: imagebuild-testenv
EOF
}

make_node_pki() {
	mkdir -p "$node_pki"
	chmod 700 "$node_pki"
	install_file "$node_pki/ca.crt" "${pki_users[@]}" <"$pki/ca.crt"
	node_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth ""
	node_cert kubelet-serving "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"
	node_cert scheduler "/CN=system:kube-scheduler" clientAuth ""
	node_cert scheduler-serving "/CN=kube-scheduler" serverAuth "DNS:localhost,IP:127.0.0.1"
	node_cert controller-manager "/CN=system:kube-controller-manager" clientAuth ""
	node_cert controller-manager-serving "/CN=kube-controller-manager" serverAuth "DNS:localhost,IP:127.0.0.1"
	node_cert proxy "/CN=system:kube-proxy" clientAuth ""
	node_cert provisioner "/CN=imagebuild:node-provisioner" clientAuth ""
	local n
	for n in kubelet scheduler controller-manager proxy provisioner; do write_node_kubeconfig "$n"; done
}

# ---------------------------------------------------------------------------
# The pause image: pause.c from the pinned Kubernetes module, static.

PAUSE_VERSION=3.10.1
PAUSE_IMAGE="imagebuild.test/pause:$PAUSE_VERSION"

build_pause() {
	local out="$cache/pause-$K8S_VERSION"
	[[ -f "$out/.complete" ]] && return 0
	log "building the pause image from k8s.io/kubernetes@$K8S_VERSION"
	local src rootfs
	src="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -f "$src/build/pause/linux/pause.c" ]] || die "no pause.c in $src"
	rm -rf "$out"
	mkdir -p "$out"
	rootfs="$(mktemp -d)"
	gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-imagebuild-$K8S_VERSION" \
		-o "$rootfs/pause" "$src/build/pause/linux/pause.c"
	strip "$rootfs/pause"
	oci_layout "$out/layout" "$rootfs" '{"Entrypoint":["/pause"],"User":"65535:65535"}' "$PAUSE_IMAGE" >"$out/digest"
	rm -rf "$rootfs"
	tar -C "$out/layout" -cf "$out/pause-oci.tar" .
	touch "$out/.complete"
}

import_pause() {
	local want have
	want="$(cat "$cache/pause-$K8S_VERSION/digest")"
	have="$(ctr_node images ls name=="$PAUSE_IMAGE" 2>/dev/null | awk 'NR == 2 { print $3 }')"
	[[ "$have" == "$want" ]] && return 0
	log "importing $PAUSE_IMAGE into containerd"
	ctr_node images import --no-unpack=false "$cache/pause-$K8S_VERSION/pause-oci.tar" >/dev/null
	# Pinned, so image garbage collection never removes it.
	ctr_node images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned >/dev/null
}

# ---------------------------------------------------------------------------
# containerd

write_containerd_config() {
	local g="$IMAGEBUILD_TEST_GITEA"
	mkdir -p "$containerd_dir"/{root,state,runc,opt} "$containerd_dir/certs.d/$g" "$node_dir/cni/net.d" "$node_dir/cni/ipam"
	install_file "$containerd_dir/config.toml" node-containerd <<EOF
# Written by tests/env/node-up.sh on every start; edit the script instead.
version = 2
root = "$containerd_dir/root"
state = "$containerd_dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$containerd_sock"

[ttrpc]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$containerd_dir/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine lacks CAP_SYS_RESOURCE: without this every sandbox fails.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = false
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$containerd_dir/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni/net.d"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$containerd_dir/certs.d"
EOF
	# Gitea, as idpbuilder users configure their nodes: its certificate is the CA.
	install_file "$containerd_dir/certs.d/$g/hosts.toml" <<EOF
server = "https://$g"

[host."https://$g"]
  capabilities = ["pull", "resolve"]
  ca = "$IMAGEBUILD_TEST_GITEA_CA"
EOF
	install_file "$node_dir/cni/net.d/10-imagebuild.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "imagebuild-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$node_dir/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

exe_node_containerd() { command -v containerd; }
args_node_containerd() { printf '%s\n' --config "$containerd_dir/config.toml" --log-level info; }

# ---------------------------------------------------------------------------
# Small helpers of the pod network.

# dnsmasq without a daemon, hosts file or upstream: it answers the names
# below and nothing else (no query leaves the machine).
exe_node_dns() { command -v dnsmasq; }
args_node_dns() {
	printf '%s\n' --keep-in-foreground --conf-file=/dev/null --no-hosts --no-resolv \
		--bind-interfaces "--listen-address=$NODE_IP" --port=53 "--pid-file=" \
		"--address=/cnoe.localtest.me/$NODE_IP" "--local=/cnoe.localtest.me/" \
		"--host-record=kubernetes.default.svc.$CLUSTER_DOMAIN,10.0.0.1" \
		"--local=/$CLUSTER_DOMAIN/" --log-facility=-
}

exe_node_gitea_forward() { command -v socat; }
args_node_gitea_forward() {
	local p
	p="$(saved_port gitea)"
	printf '%s\n' "TCP-LISTEN:$p,bind=$NODE_IP,reuseaddr,fork,range=$POD_CIDR" "TCP:127.0.0.1:$p"
}

exe_node_api_forward() { command -v socat; }
args_node_api_forward() {
	local ip port
	read -r ip port <"$node_dir/args/api-endpoint"
	printf '%s\n' "TCP-LISTEN:$port,bind=$ip,reuseaddr,fork,range=$POD_CIDR" "TCP:127.0.0.1:$(saved_port apiserver)"
}

# ---------------------------------------------------------------------------
# kubelet

# The API server talks to the kubelet (logs, exec) without a client
# certificate unless up.sh gives it one (--kubelet-client-certificate). Then
# the kubelet accepts those requests anonymously and authorizes everyone who
# reaches it (AlwaysAllow); the kubelet port listens on the node address only
# and Pods are kept from it by iptables (setup_network). With a kubelet client
# certificate configured, anonymous access is off and authorization asks the
# API server (Webhook), as on a production node.
apiserver_has_kubelet_client_cert() {
	local pid
	pid="$(pid_of apiserver)" || return 1
	grep -q '^--kubelet-client-certificate=' <<<"$(tr '\0' '\n' <"/proc/$pid/cmdline")"
}

write_kubelet_config() {
	local anon=true authz=AlwaysAllow
	if apiserver_has_kubelet_client_cert; then anon=false authz=Webhook; fi
	mkdir -p "$node_dir/kubelet" "$node_dir/pod-logs" "$node_dir/volume-plugins"
	printf 'nameserver %s\nsearch %s\noptions ndots:1\n' "$NODE_IP" "$CLUSTER_DOMAIN" |
		install_file "$node_dir/resolv.conf" node-kubelet
	install_file "$node_dir/kubelet.yaml" node-kubelet <<EOF
# Written by tests/env/node-up.sh on every start; edit the script instead.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $(saved_port node-kubelet)
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(saved_port node-kubelet-healthz)
tlsCertFile: $node_pki/kubelet-serving.crt
tlsPrivateKeyFile: $node_pki/kubelet-serving.key
authentication:
  anonymous: {enabled: $anon}
  webhook: {enabled: true, cacheTTL: 30s}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: $authz
containerRuntimeEndpoint: unix://$containerd_sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $node_dir/resolv.conf
hairpinMode: hairpin-veth
podLogsDir: $node_dir/pod-logs
volumePluginDir: $node_dir/volume-plugins
staticPodPath: ""
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
makeIPTablesUtilChains: false
serializeImagePulls: false
maxPods: 110
# A busy shared disk must not make the node evict test Pods or their images.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
nodeStatusUpdateFrequency: 5s
nodeStatusReportFrequency: 30s
syncFrequency: 10s
EOF
}

exe_node_kubelet() { echo "$kube_bin/kubelet"; }
args_node_kubelet() {
	printf '%s\n' --config="$node_dir/kubelet.yaml" \
		--kubeconfig="$node_pki/kubelet.kubeconfig" \
		--root-dir="$node_dir/kubelet" \
		--hostname-override="$NODE_NAME" \
		--node-ip="$NODE_IP" \
		--pod-infra-container-image="$PAUSE_IMAGE" \
		--v=1
}

# ---------------------------------------------------------------------------
# kube-scheduler, kube-controller-manager, kube-proxy, provisioner

exe_node_scheduler() { echo "$kube_bin/kube-scheduler"; }
args_node_scheduler() {
	local kc="$node_pki/scheduler.kubeconfig"
	printf '%s\n' --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
		--bind-address=127.0.0.1 --secure-port="$(saved_port node-scheduler)" \
		--tls-cert-file="$node_pki/scheduler-serving.crt" --tls-private-key-file="$node_pki/scheduler-serving.key" \
		--leader-elect=false --profiling=false --v=1
}

# The controllers a cluster with a node needs. up.sh's controller manager
# runs some of them (read from its command line); this one runs the rest.
node_controllers=(
	serviceaccount-controller serviceaccount-token-controller clusterrole-aggregation-controller
	namespace-controller garbage-collector-controller root-ca-certificate-publisher-controller
	replicaset-controller deployment-controller job-controller cronjob-controller
	ttl-after-finished-controller statefulset-controller daemonset-controller
	replicationcontroller-controller disruption-controller resourcequota-controller
	endpoints-controller endpointslice-controller endpointslice-mirroring-controller
	node-lifecycle-controller taint-eviction-controller pod-garbage-collector-controller ttl-controller
	persistentvolume-binder-controller persistentvolume-attach-detach-controller
	persistentvolume-protection-controller persistentvolumeclaim-protection-controller
	persistentvolume-expander-controller ephemeral-volume-controller
)

kcm_controllers() {
	local pid theirs="" c out=()
	if pid="$(pid_of controller-manager)"; then
		theirs="$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n 's/^--controllers=//p')"
	fi
	[[ ",$theirs," == *",*,"* ]] && return 0
	for c in "${node_controllers[@]}"; do
		[[ ",$theirs," == *",$c,"* ]] || out+=("$c")
	done
	local IFS=,
	printf '%s' "${out[*]}"
}

exe_node_controller_manager() { echo "$kube_bin/kube-controller-manager"; }
args_node_controller_manager() {
	local kc="$node_pki/controller-manager.kubeconfig" controllers
	controllers="$(kcm_controllers)"
	printf '%s\n' --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
		--bind-address=127.0.0.1 --secure-port="$(saved_port node-controller-manager)" \
		--tls-cert-file="$node_pki/controller-manager-serving.crt" \
		--tls-private-key-file="$node_pki/controller-manager-serving.key" \
		--leader-elect=false --use-service-account-credentials=true \
		--service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
		--controllers="$controllers" \
		--node-monitor-grace-period=40s \
		--profiling=false --v=1
}

write_proxy_config() {
	install_file "$node_dir/kube-proxy.yaml" node-proxy <<EOF
# Written by tests/env/node-up.sh on every start; edit the script instead.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $node_pki/proxy.kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
nodePortAddresses: ["$NODE_IP/32"]
healthzBindAddress: 127.0.0.1:$(saved_port node-proxy-healthz)
metricsBindAddress: 127.0.0.1:$(saved_port node-proxy-metrics)
iptables:
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 1s
# Leave the machine's conntrack settings as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

exe_node_proxy() { echo "$kube_bin/kube-proxy"; }
args_node_proxy() { printf '%s\n' --config="$node_dir/kube-proxy.yaml" --v=1; }

exe_node_provisioner() { echo "$node_tools/node-provisioner"; }
args_node_provisioner() {
	printf '%s\n' -kubeconfig "$node_pki/provisioner.kubeconfig" -dir "$node_dir/volumes" \
		-class "$STORAGE_CLASS" -name "$PROVISIONER_NAME" -node "$NODE_NAME"
}

apply_cluster_objects() {
	kubectl_admin apply --server-side --force-conflicts --field-manager=imagebuild-testnode -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $STORAGE_CLASS
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: $PROVISIONER_NAME
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "imagebuild:node-provisioner"}
rules:
- apiGroups: [""]
  resources: [persistentvolumes]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "imagebuild:node-provisioner"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "imagebuild:node-provisioner"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "imagebuild:node-provisioner"}
EOF
}

write_node_sh() {
	local g="$IMAGEBUILD_TEST_GITEA/$IMAGEBUILD_TEST_GITEA_OWNER"
	{
		echo "# Written by tests/env/node-up.sh; source it after env.sh to use the test node."
		echo "export IMAGEBUILD_TEST_NODE=1"
		printf 'export IMAGEBUILD_TEST_NODE_NAME=%q\n' "$NODE_NAME"
		printf 'export IMAGEBUILD_TEST_NODE_IP=%q\n' "$NODE_IP"
		printf 'export IMAGEBUILD_TEST_POD_CIDR=%q\n' "$POD_CIDR"
		printf 'export IMAGEBUILD_TEST_CONTAINERD_SOCKET=%q\n' "$containerd_sock"
		printf 'export IMAGEBUILD_TEST_PAUSE_IMAGE=%q\n' "$PAUSE_IMAGE"
		printf 'export IMAGEBUILD_TEST_STORAGE_CLASS=%q\n' "$STORAGE_CLASS"
		printf 'export IMAGEBUILD_TEST_VOLUMES_DIR=%q\n' "$node_dir/volumes"
		printf 'export IMAGEBUILD_TEST_BUSYBOX_IMAGE=%q\n' "$g/busybox:1"
		printf 'export IMAGEBUILD_TEST_KUBECTL_IMAGE=%q\n' "$g/kubectl:$K8S_VERSION"
	} >"$state/node.sh.tmp"
	mv "$state/node.sh.tmp" "$state/node.sh"
}

# ---------------------------------------------------------------------------
if [[ "${1:-}" == --check ]]; then
	[[ -f "$state/env.sh" ]] || exit 1
	check_all
	exit
fi

start=$SECONDS
mkdir -p "$machine_dir"
# fd 9, like up.sh: launch() closes it in the daemons, so none holds the lock.
exec 9>"$machine_lock"
flock 9
claim_machine

# Everything up already: only make sure Gitea still has the test images.
if [[ -f "$state/env.sh" ]] && check_all; then
	# shellcheck disable=SC1091
	source "$state/env.sh"
	"$here/node/test-images.sh" >/dev/null
	write_node_sh
	log "node $NODE_NAME is up ($((SECONDS - start)) s)"
	exit 0
fi

install_packages
"$here/install-deps.sh"
"$here/build.sh"
"$here/node/build.sh"
for b in kubelet kube-scheduler kube-controller-manager kube-proxy; do
	[[ -x "$kube_bin/$b" ]] || die "$kube_bin/$b was not built (see tests/env/build.sh)"
done
if ! "$here/up.sh" --check; then
	log "the environment is not up; running up.sh"
	"$here/up.sh"
fi
# shellcheck disable=SC1091
source "$state/env.sh"
mkdir -p "$node_dir"

# Ports: a running component keeps its own; one about to start gets its last
# one if free, else the default, else a free one (lib.sh choose_port).
port_for() { # PORT-NAME DEFAULT COMPONENT
	is_running "$3" && saved_port "$1" >/dev/null && return 0
	choose_port "$1" "$2" >/dev/null
}
port_for node-kubelet 10250 node-kubelet
port_for node-kubelet-healthz 10248 node-kubelet
port_for node-proxy-healthz 10256 node-proxy
port_for node-proxy-metrics 10249 node-proxy
port_for node-scheduler 10259 node-scheduler
port_for node-controller-manager 10257 node-controller-manager
setup_network
make_node_pki
build_pause

# A component whose configuration (certificates included) changed restarts;
# one that runs and is healthy is left alone.
ensure() {
	local name="$1" grace="${2:-10}"
	if is_running "$name"; then
		if ! up_to_date "$name"; then
			log "$name: configuration changed; restarting it"
		else
			wait_healthy "$name" "$grace" quiet && return 0
			log "$name is running but not healthy; restarting it"
		fi
	fi
	stop_component "$name"
	log "starting $name"
	rm -f "$node_dir/changed/$name"
	start_component "$name"
}

write_containerd_config
ensure node-containerd
wait_healthy node-containerd 30
import_pause

ensure node-dns
decide_api_forward
ensure node-gitea-forward
if api_forward_needed; then ensure node-api-forward; else stop_component node-api-forward; fi

write_kubelet_config
# The node object vanishes when up.sh starts etcd afresh; only a kubelet start
# registers it again.
if is_running node-kubelet && ! kubectl_admin get node "$NODE_NAME" --request-timeout=5s >/dev/null 2>&1; then
	log "node $NODE_NAME is not registered; restarting the kubelet"
	stop_component node-kubelet
fi
ensure node-kubelet 20
wait_healthy node-kubelet 60
ensure node-scheduler
controllers="$(kcm_controllers)"
if [[ -n "$controllers" ]]; then
	ensure node-controller-manager
else
	stop_component node-controller-manager
fi
write_proxy_config
ensure node-proxy
ensure node-provisioner
apply_cluster_objects

wait_healthy node-scheduler 60
[[ -n "$controllers" ]] && wait_healthy node-controller-manager 60
wait_healthy node-proxy 60
wait_healthy node-provisioner 10

log "waiting for node $NODE_NAME to be Ready"
deadline=$((SECONDS + 120))
until node_ready; do
	if ((SECONDS > deadline)); then
		kubectl_admin describe node "$NODE_NAME" >&2 || true
		tail -n 30 "$state/logs/node-kubelet.log" >&2 || true
		die "node $NODE_NAME not Ready after 120 s"
	fi
	sleep 1
done

"$here/node/test-images.sh" >/dev/null
write_node_sh
log "node $NODE_NAME up in $((SECONDS - start)) s; source $state/env.sh and $state/node.sh"
