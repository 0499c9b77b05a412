# Shared by node-up.sh and node-down.sh (sourced after ../lib.sh): the fixed
# shape of the test node and its paths.
# shellcheck shell=bash
# shellcheck disable=SC2154 # state, cache, K8S_VERSION come from ../versions.env and ../lib.sh
# shellcheck disable=SC2034 # used by the scripts sourcing this file

node_dir="$state/node"
node_pki="$node_dir/pki"
NODE_NAME=imagebuild-node

# The pod network: a Linux bridge made by node-up.sh (the CNI bridge plugin
# then uses it), whose address is also the node's InternalIP and where the
# node's DNS and the forwarders to Gitea and the API server listen.
NODE_BRIDGE=ibnode0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
CLUSTER_DOMAIN=cluster.local

STORAGE_CLASS=imagebuild-hostpath
PROVISIONER_NAME=imagebuild.test/hostpath

containerd_dir="$node_dir/containerd"
containerd_sock="$containerd_dir/containerd.sock"
node_tools="$cache/node-tools-$K8S_VERSION/bin"

# Host-wide things (iptables chains, the bridge, cgroups, /var/run/netns) are
# shared by every clone on the machine, so at most one test node runs per
# machine: its owner (a state directory) is recorded here, under this lock.
machine_dir=/run/imagebuild-testnode
machine_lock="$machine_dir/lock"
machine_owner="$machine_dir/owner"

# The node's processes, in the order node-down.sh stops them (kubelet first).
node_components=(node-kubelet node-proxy node-scheduler node-controller-manager node-provisioner
	node-api-forward node-gitea-forward node-dns node-containerd)

# Our iptables chains (filter table), hooked into INPUT and FORWARD.
FW_FORWARD=IMAGEBUILD-NODE-FWD
FW_INPUT=IMAGEBUILD-NODE-IN

ctr_node() { ctr --address "$containerd_sock" --namespace k8s.io "$@"; }
