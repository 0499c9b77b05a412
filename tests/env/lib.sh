# Shared by up.sh and down.sh (sourced, not run): paths, process handling,
# port choice and certificate helpers of the test environment.
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables below are used by the scripts sourcing this file

repo="${repo:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
state="${IMAGEBUILD_TESTENV_DIR:-$repo/target/testenv}"
cache="${IMAGEBUILD_TESTENV_CACHE:-$HOME/.cache/imagebuild-testenv}"

pki="$state/pki"
gitea_dir="$state/gitea"
registry_dir="$state/registry"

kube_bin="$cache/kubernetes-$K8S_VERSION/bin"
helm_bin="$cache/helm-$HELM_VERSION/bin"
gitea_bin="$cache/gitea-$GITEA_VERSION/bin/gitea"
gitea_share="$cache/gitea-$GITEA_VERSION/share"
if [[ "$ETCD_VERSION" == debian ]]; then
	etcd_bin=/usr/bin/etcd
else
	etcd_bin="$cache/etcd-$ETCD_VERSION/bin/etcd"
fi

# Names the certificates are made for; /etc/hosts maps them to 127.0.0.1.
gitea_host=gitea.cnoe.localtest.me
registry_host=registry.imagebuild.test
GITEA_ADMIN=giteaAdmin
REGISTRY_USER=tester

log() { printf '[testenv] %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

random_string() { # N alphanumeric characters
	local s=""
	while ((${#s} < $1)); do
		s+="$(openssl rand -base64 48 | tr -dc 'A-Za-z0-9')"
	done
	printf '%s' "${s:0:$1}"
}

# ---------------------------------------------------------------------------
# Ports. A component takes its preferred default when that is free, else the
# port it had last time, else a random free one; so two environments, or a
# port taken by something else, never break a start.

# port_in_use PORT: binding 127.0.0.1:PORT would fail, i.e. a TCP socket
# listens on PORT at 127.0.0.1, 0.0.0.0, :: or ::ffff:127.0.0.1. Listeners on
# other addresses do not count (the test node forwards the same port numbers
# from its own addresses to ours), nor do connections of a stopped instance
# lingering in TIME_WAIT (the servers here set SO_REUSEADDR).
port_in_use() {
	local hex
	hex="$(printf '%04X' "$1")"
	awk -v p="$hex" '
		FNR > 1 && $4 == "0A" {
			split($2, a, ":")
			if (a[2] == p && (a[1] == "0100007F" || a[1] ~ /^0+$/ ||
				a[1] == "0000000000000000FFFF00000100007F")) found = 1
		}
		END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

saved_port() { # NAME -> the port NAME was last started on
	local p
	p="$(cat "$state/ports/$1" 2>/dev/null)" || return 1
	[[ "$p" =~ ^[0-9]+$ ]] || return 1
	printf '%s' "$p"
}

# port_reserved PORT NAME: another component of this environment was given PORT.
port_reserved() {
	local f
	for f in "$state"/ports/*; do
		[[ -f "$f" && "$(basename "$f")" != "$2" && "$(cat "$f")" == "$1" ]] && return 0
	done
	return 1
}

choose_port() { # NAME PREFERRED -> prints the chosen port and records it
	local name="$1" p candidates=()
	mkdir -p "$state/ports"
	p="$(saved_port "$name" || true)"
	# A component restarted under running clients (restart.sh) must come back where they
	# expect it, so its last port goes first.
	if [[ -n "$p" && -n "${IMAGEBUILD_TESTENV_KEEP_PORTS:-}" ]]; then
		candidates+=("$p" "$2")
	else
		candidates+=("$2")
		[[ -n "$p" ]] && candidates+=("$p")
	fi
	for _ in $(seq 200); do candidates+=($((20000 + RANDOM % 12000))); done
	for p in "${candidates[@]}"; do
		if ! port_in_use "$p" && ! port_reserved "$p" "$name"; then
			printf '%s\n' "$p" >"$state/ports/$name"
			printf '%s' "$p"
			return 0
		fi
	done
	die "no free port for $name"
}

# ---------------------------------------------------------------------------
# Processes. Each component runs in its own session (setsid), with its pid
# and executable in $state/run/NAME.pid; a pid is only trusted while
# /proc/PID/exe is still that executable, so a recycled pid is never killed.

pid_of() { # NAME -> pid of the running component, or fails
	local f="$state/run/$1.pid" pid exe actual
	[[ -f "$f" ]] || return 1
	{
		read -r pid
		read -r exe
	} <"$f" || true
	[[ "$pid" =~ ^[0-9]+$ && -n "$exe" ]] || return 1
	actual="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
	[[ "${actual% (deleted)}" == "$exe" ]] || return 1
	printf '%s' "$pid"
}

is_running() { pid_of "$1" >/dev/null; }

# launch NAME EXECUTABLE ARGS...: starts a daemon detached from the caller:
# new session, stdin from /dev/null, output to its log, and the lock's fd 9
# closed so the daemon never holds the environment lock.
launch() {
	local name="$1" exe
	exe="$(readlink -f "$2")"
	shift 2
	[[ -x "$exe" ]] || die "$name: $exe is not executable"
	mkdir -p "$state/run" "$state/logs"
	printf '\n==== %s start %s\n' "$(date -u +%FT%TZ)" "$name" >>"$state/logs/$name.log"
	setsid "$exe" "$@" </dev/null >>"$state/logs/$name.log" 2>&1 9>&- &
	local pid=$! tries=0
	printf '%s\n%s\n' "$pid" "$exe" >"$state/run/$name.pid"
	# Until the forked shell has exec'd the daemon, /proc/PID/exe is not it and pid_of
	# would call the component dead; wait (briefly) for the exec.
	while ((tries++ < 100)) && alive "$pid" && ! pid_of "$name" >/dev/null; do
		sleep 0.02
	done
}

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
	local st
	st="$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" || return 1
	[[ -n "$st" && "$st" != Z ]]
}

# stop_component NAME...: SIGTERM to each one's process group, all at once,
# then SIGKILL to whatever still runs after 15 s.
stop_component() {
	local name pid pids=()
	for name in "$@"; do
		if pid="$(pid_of "$name")"; then
			log "stopping $name (pid $pid)"
			kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
		rm -f "$state/run/$name.pid"
	done
	local deadline=$((SECONDS + 15)) left
	while :; do
		left=()
		for pid in "${pids[@]}"; do alive "$pid" && left+=("$pid"); done
		((${#left[@]} == 0)) && return 0
		((SECONDS < deadline)) || break
		sleep 0.1
	done
	for pid in "${left[@]}"; do
		log "pid $pid did not stop; killing it"
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
	done
	sleep 0.5
}

# wait_healthy NAME SECONDS [quiet]: waits until component_ok NAME (defined by
# the caller). Fails early, with the end of its log, when the process died.
wait_healthy() {
	local name="$1" deadline=$((SECONDS + $2)) quiet="${3:-}"
	while ((SECONDS < deadline)); do
		component_ok "$name" && return 0
		if ! is_running "$name"; then
			[[ -n "$quiet" ]] && return 1
			log "$name exited; end of $state/logs/$name.log:"
			tail -n 30 "$state/logs/$name.log" >&2 || true
			exit 1
		fi
		sleep 0.25
	done
	[[ -n "$quiet" ]] && return 1
	log "$name not healthy after $2 s; end of $state/logs/$name.log:"
	tail -n 30 "$state/logs/$name.log" >&2 || true
	exit 1
}

# ---------------------------------------------------------------------------
# Certificates (ECDSA P-256, made with openssl).

# cert_valid FILE: exists and is valid for at least another day.
cert_valid() { [[ -f "$1" ]] && openssl x509 -in "$1" -noout -checkend 86400 >/dev/null 2>&1; }

make_ca() { # BASENAME COMMON-NAME -> BASENAME.crt, BASENAME.key
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$1.key" -out "$1.crt" -days 3650 -subj "/CN=$2" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
	chmod 600 "$1.key"
}

# make_leaf CA-BASENAME BASENAME SUBJECT EXTENDED-KEY-USAGE SANS
make_leaf() {
	local ca="$1" out="$2" subj="$3" eku="$4" sans="$5" ext
	ext="$(mktemp)"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$eku"
		echo "authorityKeyIdentifier=keyid"
		[[ -n "$sans" ]] && echo "subjectAltName=$sans"
	} >"$ext"
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$out.key" -out "$out.csr" -subj "$subj" 2>/dev/null
	openssl x509 -req -in "$out.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
		-out "$out.crt" -days 825 -extfile "$ext" 2>/dev/null
	chmod 600 "$out.key"
	rm -f "$out.csr" "$ext"
}

# ---------------------------------------------------------------------------
# The certificates name gitea.cnoe.localtest.me and registry.imagebuild.test (and the
# credential tests serve mirror.imagebuild.test and auth.imagebuild.test);
# all must resolve to loopback on this machine.
ensure_hosts_entry() {
	local names=(gitea.cnoe.localtest.me cnoe.localtest.me registry.imagebuild.test mirror.imagebuild.test auth.imagebuild.test) n missing=()
	for n in "${names[@]}"; do
		[[ "$(getent ahostsv4 "$n" 2>/dev/null | awk 'NR == 1 { print $1 }')" == 127.0.0.1 ]] || missing+=("$n")
	done
	((${#missing[@]} == 0)) && return 0
	if [[ -w /etc/hosts ]]; then
		log "adding '127.0.0.1 ${missing[*]}' to /etc/hosts"
		printf '127.0.0.1 %s  # imagebuild tests/env\n' "${missing[*]}" >>/etc/hosts
	else
		die "these names must resolve to 127.0.0.1: ${missing[*]} (add them to /etc/hosts as root)"
	fi
}
