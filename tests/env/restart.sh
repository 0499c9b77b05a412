#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops or crashes components of the running test environment, and starts them again, for the
# restart scenarios (tests/restarts.rs). Starting goes through up.sh, which starts only what is
# not running and healthy (etcd's and Gitea's data are kept while they run), with every
# component back on the port it had, so running clients find it again.
#
# Usage: restart.sh kill NAME...   SIGKILL each component's process group (a crash)
#        restart.sh stop NAME...   SIGTERM, SIGKILL after 15 s (a clean shutdown)
#        restart.sh start          start whatever is down, on the same ports
#        restart.sh NAME...        stop, then start
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"

kill_component() {
	local name pid
	for name in "$@"; do
		if pid="$(pid_of "$name")"; then
			log "killing $name (pid $pid)"
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
			local deadline=$((SECONDS + 10))
			while alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
		fi
	done
}

start() {
	IMAGEBUILD_TESTENV_KEEP_PORTS=1 "$here/up.sh"
}

with_lock() {
	mkdir -p "$state"
	exec 9>"$state/lock"
	flock 9
	"$@"
	exec 9>&-
}

case "${1:-}" in
kill)
	shift
	with_lock kill_component "$@"
	;;
stop)
	shift
	with_lock stop_component "$@"
	;;
start) start ;;
"" | -h | --help)
	sed -n '2,12p' "$0"
	exit 2
	;;
*)
	with_lock stop_component "$@"
	start
	;;
esac
