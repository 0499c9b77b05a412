#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops every process up.sh started (found through the pid files in
# $IMAGEBUILD_TESTENV_DIR/run; SIGTERM to the process group, SIGKILL after
# 15 s). Harmless when nothing runs. Certificates, passwords and Gitea's and the
# registry's data are kept for the next up.sh; `down.sh --purge` removes them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"

[[ -d "$state" ]] || exit 0
exec 9>"$state/lock"
flock 9

# etcd last, so the API server can shut down cleanly.
stop_component controller-manager apiserver gitea registry
stop_component etcd
rm -f "$state/env.sh"

if [[ "${1:-}" == --purge ]]; then
	log "removing $state"
	# The lock file goes last; holders of fd 9 are only this script.
	find "$state" -mindepth 1 -maxdepth 1 ! -name lock -exec rm -rf {} +
fi
