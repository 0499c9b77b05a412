#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Brings up the test environment on loopback and writes target/testenv/env.sh:
#
#   etcd + kube-apiserver   started the way controller-runtime's envtest does
#                           (generated PKI, RBAC, PodSecurity admission on)
#   Gitea                   HTTPS with a certificate made like idpbuilder's
#                           (self-signed ECDSA P-256, CA:TRUE, *.cnoe.localtest.me)
#   docker-registry         second registry: CA-signed TLS, htpasswd basic auth
#   idpbuilder's Secrets    mirrored into the API server
#   kubectl, helm           of the pinned versions, first on PATH in env.sh
#
# Idempotent: components already running and healthy are left alone, so a
# second call is quick. Concurrent callers are serialised with flock.
# State (certificates, passwords, data, logs, pid files) lives in
# $IMAGEBUILD_TESTENV_DIR (default <repo>/target/testenv) and is reused.
#
# Usage: up.sh           bring everything up (installs and builds what is missing)
#        up.sh --check   exit 0 when every component is up and healthy, else 1
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"

# ---------------------------------------------------------------------------
# Health checks, one per component. They read the port the component was
# started on from $state/ports/<name>; short timeouts keep `--check` fast.

etcd_healthy() {
	local p
	p="$(saved_port etcd)" || return 1
	curl -fsS --max-time 3 "http://127.0.0.1:$p/health" 2>/dev/null | grep -q '"health":"true"'
}

apiserver_healthy() {
	local p
	p="$(saved_port apiserver)" || return 1
	[[ "$(curl -sS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
		"https://127.0.0.1:$p/readyz" 2>/dev/null)" == ok ]]
}

controller_manager_healthy() {
	local p
	p="$(saved_port controller-manager)" || return 1
	[[ "$(curl -sS --max-time 3 --cacert "$pki/ca.crt" "https://127.0.0.1:$p/healthz" 2>/dev/null)" == ok ]]
}

gitea_healthy() {
	local p
	p="$(saved_port gitea)" || return 1
	curl -fsS --max-time 5 --cacert "$gitea_dir/tls/cert.pem" \
		"https://$gitea_host:$p/api/healthz" >/dev/null 2>&1
}

registry_healthy() {
	local p
	p="$(saved_port registry)" || return 1
	# Up and enforcing auth: an anonymous /v2/ is refused with 401.
	[[ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 3 --cacert "$registry_dir/ca.crt" \
		"https://$registry_host:$p/v2/" 2>/dev/null)" == 401 ]]
}

# component_ok NAME: the process from the pid file is alive and healthy.
component_ok() { is_running "$1" && "${1//-/_}_healthy"; }

components() {
	echo etcd apiserver
	want_controller_manager && echo controller-manager
	echo gitea registry
}

# want_controller_manager: kube-controller-manager creates each namespace's
# default ServiceAccount, finishes namespace deletion and garbage-collects
# owned objects. It is started when it was built (it is optional in build.sh)
# unless IMAGEBUILD_TESTENV_CONTROLLER_MANAGER=0.
want_controller_manager() {
	[[ "${IMAGEBUILD_TESTENV_CONTROLLER_MANAGER:-1}" != 0 && -x "$kube_bin/kube-controller-manager" ]]
}

check_all() {
	local c
	for c in $(components); do
		component_ok "$c" || return 1
	done
	[[ -f "$state/env.sh" ]]
}

if [[ "${1:-}" == --check ]]; then
	check_all
	exit
fi

# ---------------------------------------------------------------------------
mkdir -p "$state"/{run,logs,ports}
exec 9>"$state/lock"
flock 9

"$here/install-deps.sh"
"$here/build.sh"
ensure_hosts_entry

# ---------------------------------------------------------------------------
# PKI for etcd clients and the API server (envtest style): one CA, a serving
# certificate for 127.0.0.1/localhost, an admin client certificate in
# system:masters, and a service-account key pair for issuing tokens.
make_kube_pki() {
	mkdir -p "$pki"
	if ! cert_valid "$pki/ca.crt"; then
		rm -f "$pki"/*.crt "$pki"/*.key
		make_ca "$pki/ca" "imagebuild-testenv kubernetes CA"
	fi
	cert_valid "$pki/apiserver.crt" ||
		make_leaf "$pki/ca" "$pki/apiserver" "/CN=kube-apiserver" serverAuth \
			"DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
	cert_valid "$pki/admin.crt" ||
		make_leaf "$pki/ca" "$pki/admin" "/O=system:masters/CN=imagebuild-testenv-admin" clientAuth ""
	cert_valid "$pki/controller-manager.crt" ||
		make_leaf "$pki/ca" "$pki/controller-manager" "/CN=system:kube-controller-manager" clientAuth ""
	cert_valid "$pki/controller-manager-serving.crt" ||
		make_leaf "$pki/ca" "$pki/controller-manager-serving" "/CN=kube-controller-manager" serverAuth \
			"DNS:localhost,IP:127.0.0.1"
	if [[ ! -f "$pki/sa.key" ]]; then
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
		openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
	fi
}

# write_kubeconfig FILE USER-CERT-BASENAME PORT
write_kubeconfig() {
	local file="$1" user="$2" port="$3"
	cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: imagebuild-testenv
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $(basename "$user")
  user:
    client-certificate-data: $(base64 -w0 <"$user.crt")
    client-key-data: $(base64 -w0 <"$user.key")
contexts:
- name: imagebuild-testenv
  context:
    cluster: imagebuild-testenv
    user: $(basename "$user")
    namespace: default
current-context: imagebuild-testenv
EOF
	chmod 600 "$file.tmp"
	mv "$file.tmp" "$file"
}

start_etcd() {
	local client peer
	client="$(choose_port etcd 12379)"
	peer="$(choose_port etcd-peer 12380)"
	# Fresh data on every start, as envtest does: nothing in etcd outlives the
	# environment, and a single-member cluster never trips over a changed peer URL.
	rm -rf "$state/etcd"
	mkdir -p "$state/etcd"
	launch etcd "$etcd_bin" \
		--name testenv \
		--data-dir "$state/etcd/data" \
		--listen-client-urls "http://127.0.0.1:$client" \
		--advertise-client-urls "http://127.0.0.1:$client" \
		--listen-peer-urls "http://127.0.0.1:$peer" \
		--initial-advertise-peer-urls "http://127.0.0.1:$peer" \
		--initial-cluster "testenv=http://127.0.0.1:$peer" \
		--unsafe-no-fsync \
		--logger zap \
		--log-level warn
}

start_apiserver() {
	local port etcd_port
	port="$(choose_port apiserver 16443)"
	etcd_port="$(saved_port etcd)"
	write_kubeconfig "$state/kubeconfig" "$pki/admin" "$port"
	write_kubeconfig "$pki/controller-manager.kubeconfig" "$pki/controller-manager" "$port"
	launch apiserver "$kube_bin/kube-apiserver" \
		--bind-address=127.0.0.1 \
		--secure-port="$port" \
		--etcd-servers="http://127.0.0.1:$etcd_port" \
		--cert-dir="$pki" \
		--tls-cert-file="$pki/apiserver.crt" \
		--tls-private-key-file="$pki/apiserver.key" \
		--client-ca-file="$pki/ca.crt" \
		--service-account-issuer="https://127.0.0.1:$port" \
		--service-account-key-file="$pki/sa.pub" \
		--service-account-signing-key-file="$pki/sa.key" \
		--authorization-mode=Node,RBAC \
		--service-cluster-ip-range=10.0.0.0/24 \
		--allow-privileged=true \
		--profiling=false \
		--v=1
}

start_controller_manager() {
	local port
	port="$(choose_port controller-manager 16257)"
	# Only the controllers that make a bare API server behave like a cluster
	# for API objects; nothing that needs nodes or a cloud.
	launch controller-manager "$kube_bin/kube-controller-manager" \
		--kubeconfig="$pki/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$pki/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$pki/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 \
		--secure-port="$port" \
		--tls-cert-file="$pki/controller-manager-serving.crt" \
		--tls-private-key-file="$pki/controller-manager-serving.key" \
		--leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file="$pki/sa.key" \
		--root-ca-file="$pki/ca.crt" \
		--controllers=serviceaccount-controller,clusterrole-aggregation-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller,replicaset-controller,deployment-controller,job-controller,cronjob-controller,ttl-after-finished-controller \
		--profiling=false \
		--v=1
}

# ---------------------------------------------------------------------------
# Gitea: the certificate is made exactly the way idpbuilder's Go code makes
# it (ECDSA P-256, self-signed, O=cnoe.io, CA:TRUE critical, keyCertSign +
# digitalSignature, serverAuth, SANs cnoe.localtest.me and *.cnoe.localtest.me
# only, valid 8766 h) and Gitea serves it itself as its server certificate.
make_gitea_cert() {
	local tls="$gitea_dir/tls"
	mkdir -p "$tls"
	cert_valid "$tls/cert.pem" && return 0
	cat >"$tls/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
O = cnoe.io
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = DNS:cnoe.localtest.me, DNS:*.cnoe.localtest.me
EOF
	openssl req -x509 -config "$tls/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-nodes -keyout "$tls/key.pem" -out "$tls/cert.pem" -days 365 2>/dev/null
	chmod 600 "$tls/key.pem"
}

gitea() {
	GITEA_WORK_DIR="$gitea_dir" "$gitea_bin" --config "$gitea_dir/app.ini" --work-path "$gitea_dir" "$@"
}

write_gitea_config() {
	local port="$1"
	[[ -f "$gitea_dir/secrets.env" ]] || {
		printf 'SECRET_KEY=%s\nINTERNAL_TOKEN=%s\nJWT_SECRET=%s\n' \
			"$("$gitea_bin" generate secret SECRET_KEY)" \
			"$("$gitea_bin" generate secret INTERNAL_TOKEN)" \
			"$("$gitea_bin" generate secret JWT_SECRET)" >"$gitea_dir/secrets.env"
		chmod 600 "$gitea_dir/secrets.env"
	}
	# shellcheck disable=SC1091
	source "$gitea_dir/secrets.env"
	cat >"$gitea_dir/app.ini" <<EOF
; Written by tests/env/up.sh on every start of Gitea; edit the script instead.
APP_NAME = imagebuild test Gitea
RUN_MODE = prod
RUN_USER = $(id -un)
WORK_PATH = $gitea_dir
I_AM_BEING_UNSAFE_RUNNING_AS_ROOT = true

[server]
PROTOCOL = https
DOMAIN = $gitea_host
HTTP_ADDR = 127.0.0.1
HTTP_PORT = $port
ROOT_URL = https://$gitea_host:$port/
CERT_FILE = $gitea_dir/tls/cert.pem
KEY_FILE = $gitea_dir/tls/key.pem
; Built without the bindata tag: templates/ options/ public/ come from the
; module source kept next to the binary.
STATIC_ROOT_PATH = $gitea_share
APP_DATA_PATH = $gitea_dir/data
DISABLE_SSH = true
START_SSH_SERVER = false
LFS_START_SERVER = false
OFFLINE_MODE = true
ENABLE_PPROF = false

[database]
DB_TYPE = sqlite3
PATH = $gitea_dir/data/gitea.db
SQLITE_JOURNAL_MODE = WAL

[repository]
ROOT = $gitea_dir/data/repositories

[security]
INSTALL_LOCK = true
SECRET_KEY = $SECRET_KEY
INTERNAL_TOKEN = $INTERNAL_TOKEN
PASSWORD_COMPLEXITY = off

[oauth2]
JWT_SECRET = $JWT_SECRET

[service]
DISABLE_REGISTRATION = true

[packages]
ENABLED = true

[indexer]
ISSUE_INDEXER_TYPE = db
REPO_INDEXER_ENABLED = false

[session]
PROVIDER = memory

[cache]
ADAPTER = memory

; Nothing may reach the internet from here.
[cron.update_checker]
ENABLED = false

[mirror]
ENABLED = false

[picture]
DISABLE_GRAVATAR = true
ENABLE_FEDERATED_AVATAR = false

[log]
MODE = console
LEVEL = Info
ROOT_PATH = $gitea_dir/log
EOF
}

# Bootstrap once: schema, admin user whose password contains ':' and '@'
# (like idpbuilder's random ones), and an access token with every scope.
bootstrap_gitea() {
	# A removed database means a new bootstrap (user and token included).
	[[ -f "$gitea_dir/data/gitea.db" ]] || rm -f "$gitea_dir/bootstrapped"
	[[ -f "$gitea_dir/bootstrapped" ]] && return 0
	log "bootstrapping Gitea"
	[[ -f "$gitea_dir/password" ]] || {
		printf '%s:%s@%s' "$(random_string 14)" "$(random_string 12)" "$(random_string 12)" >"$gitea_dir/password"
		chmod 600 "$gitea_dir/password"
	}
	local pw
	pw="$(cat "$gitea_dir/password")"
	gitea migrate >>"$state/logs/gitea-bootstrap.log" 2>&1
	if gitea admin user list --admin 2>>"$state/logs/gitea-bootstrap.log" | awk '{print $2}' | grep -qx "$GITEA_ADMIN"; then
		gitea admin user change-password --username "$GITEA_ADMIN" --password "$pw" \
			--must-change-password=false >>"$state/logs/gitea-bootstrap.log" 2>&1
	else
		gitea admin user create --admin --username "$GITEA_ADMIN" --password "$pw" \
			--email "giteaadmin@cnoe.localtest.me" --must-change-password=false \
			>>"$state/logs/gitea-bootstrap.log" 2>&1
	fi
	new_gitea_token
	touch "$gitea_dir/bootstrapped"
}

new_gitea_token() {
	gitea admin user generate-access-token --username "$GITEA_ADMIN" \
		--token-name "imagebuild-tests-$(date +%s)-$RANDOM" --scopes all --raw \
		2>>"$state/logs/gitea-bootstrap.log" | tail -n1 >"$gitea_dir/token.tmp"
	[[ -s "$gitea_dir/token.tmp" ]] || die "could not create a Gitea access token (see $state/logs/gitea-bootstrap.log)"
	chmod 600 "$gitea_dir/token.tmp"
	mv "$gitea_dir/token.tmp" "$gitea_dir/token"
}

# The token must still be valid (the database may have been replaced).
check_gitea_token() {
	local p code
	p="$(saved_port gitea)"
	code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$gitea_dir/tls/cert.pem" \
		-H "Authorization: token $(cat "$gitea_dir/token" 2>/dev/null)" "https://$gitea_host:$p/api/v1/user" || true)"
	if [[ "$code" != 200 ]]; then
		log "Gitea token not accepted ($code); creating a new one"
		new_gitea_token
	fi
}

start_gitea() {
	local port
	port="$(choose_port gitea 18443)"
	mkdir -p "$gitea_dir/data" "$gitea_dir/log"
	make_gitea_cert
	write_gitea_config "$port"
	bootstrap_gitea
	launch gitea "$gitea_bin" web --config "$gitea_dir/app.ini" --work-path "$gitea_dir"
}

# ---------------------------------------------------------------------------
# The second registry: Debian's docker-registry (CNCF distribution), with a
# certificate from its own ordinary CA and bcrypt htpasswd basic auth.
start_registry() {
	local port
	port="$(choose_port registry 15000)"
	mkdir -p "$registry_dir/data"
	cert_valid "$registry_dir/ca.crt" || {
		rm -f "$registry_dir"/{ca,tls}.{crt,key}
		make_ca "$registry_dir/ca" "imagebuild-testenv registry CA"
	}
	cert_valid "$registry_dir/tls.crt" ||
		make_leaf "$registry_dir/ca" "$registry_dir/tls" "/CN=$registry_host" serverAuth \
			"DNS:$registry_host,IP:127.0.0.1"
	[[ -f "$registry_dir/password" ]] || {
		printf '%s:%s@%s' "$(random_string 10)" "$(random_string 10)" "$(random_string 10)" >"$registry_dir/password"
		chmod 600 "$registry_dir/password"
	}
	htpasswd -Bbn "$REGISTRY_USER" "$(cat "$registry_dir/password")" >"$registry_dir/htpasswd"
	[[ -f "$registry_dir/http-secret" ]] || random_string 32 >"$registry_dir/http-secret"
	cat >"$registry_dir/config.yml" <<EOF
# Written by tests/env/up.sh on every start of the registry.
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $registry_dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  host: https://$registry_host:$port
  secret: $(cat "$registry_dir/http-secret")
  tls:
    certificate: $registry_dir/tls.crt
    key: $registry_dir/tls.key
auth:
  htpasswd:
    realm: imagebuild-testenv
    path: $registry_dir/htpasswd
EOF
	launch registry "$(command -v docker-registry)" serve "$registry_dir/config.yml"
}

# ---------------------------------------------------------------------------
# idpbuilder's Secrets, as an idpbuilder cluster has them.
mirror_idpbuilder_secrets() {
	local crt key user pw token
	crt="$(base64 -w0 <"$gitea_dir/tls/cert.pem")"
	key="$(base64 -w0 <"$gitea_dir/tls/key.pem")"
	user="$(printf '%s' "$GITEA_ADMIN" | base64 -w0)"
	pw="$(base64 -w0 <"$gitea_dir/password")"
	token="$(tr -d '\n' <"$gitea_dir/token" | base64 -w0)"
	KUBECONFIG="$state/kubeconfig" "$kube_bin/kubectl" apply --server-side --force-conflicts \
		--field-manager=imagebuild-testenv -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: gitea}
---
apiVersion: v1
kind: Namespace
metadata: {name: ingress-nginx}
---
apiVersion: v1
kind: Secret
metadata: {name: idpbuilder-cert, namespace: default}
type: Opaque
data:
  ca.crt: $crt
---
apiVersion: v1
kind: Secret
metadata: {name: idpbuilder-cert, namespace: ingress-nginx}
type: kubernetes.io/tls
data:
  tls.crt: $crt
  tls.key: $key
---
apiVersion: v1
kind: Secret
metadata: {name: gitea-credential, namespace: gitea}
type: Opaque
data:
  username: $user
  password: $pw
  token: $token
EOF
}

write_env_sh() {
	local gp rp
	gp="$(saved_port gitea)"
	rp="$(saved_port registry)"
	{
		echo "# Written by tests/env/up.sh; source it to use the test environment."
		printf 'export IMAGEBUILD_TESTENV_DIR=%q\n' "$state"
		printf 'export KUBECONFIG=%q\n' "$state/kubeconfig"
		# shellcheck disable=SC2016 # $PATH is expanded when env.sh is sourced
		printf 'export PATH=%q:%q:"$PATH"\n' "$kube_bin" "$helm_bin"
		printf 'export IMAGEBUILD_TEST_K8S_VERSION=%q\n' "$K8S_VERSION"
		printf 'export IMAGEBUILD_TEST_HELM_VERSION=%q\n' "$HELM_VERSION"
		printf 'export IMAGEBUILD_TEST_GITEA_VERSION=%q\n' "$GITEA_VERSION"
		printf 'export IMAGEBUILD_TEST_APISERVER=%q\n' "https://127.0.0.1:$(saved_port apiserver)"
		printf 'export IMAGEBUILD_TEST_GITEA=%q\n' "$gitea_host:$gp"
		printf 'export IMAGEBUILD_TEST_GITEA_CA=%q\n' "$gitea_dir/tls/cert.pem"
		printf 'export IMAGEBUILD_TEST_GITEA_USER=%q\n' "$GITEA_ADMIN"
		printf 'export IMAGEBUILD_TEST_GITEA_OWNER=%q\n' "${GITEA_ADMIN,,}"
		printf 'export IMAGEBUILD_TEST_GITEA_PASSWORD=%q\n' "$(cat "$gitea_dir/password")"
		printf 'export IMAGEBUILD_TEST_GITEA_TOKEN=%q\n' "$(tr -d '\n' <"$gitea_dir/token")"
		printf 'export IMAGEBUILD_TEST_REGISTRY=%q\n' "$registry_host:$rp"
		printf 'export IMAGEBUILD_TEST_REGISTRY_CA=%q\n' "$registry_dir/ca.crt"
		printf 'export IMAGEBUILD_TEST_REGISTRY_USER=%q\n' "$REGISTRY_USER"
		printf 'export IMAGEBUILD_TEST_REGISTRY_PASSWORD=%q\n' "$(cat "$registry_dir/password")"
	} >"$state/env.sh.tmp"
	chmod 600 "$state/env.sh.tmp"
	mv "$state/env.sh.tmp" "$state/env.sh"
}

# ---------------------------------------------------------------------------
start=$SECONDS
make_kube_pki

# Start what is not running and healthy. A component found running but not
# yet healthy (e.g. started by an interrupted run) gets a grace period first.
# When etcd starts afresh its data is new, so the API server restarts too,
# and the controller manager with it.
restarted=()
ensure() {
	local name="$1" dep="${2:-}" grace="${3:-10}"
	if is_running "$name" && [[ -z "$dep" || ! " ${restarted[*]} " =~ \ $dep\  ]]; then
		wait_healthy "$name" "$grace" quiet && return 0
		log "$name is running but not healthy; restarting it"
	fi
	stop_component "$name"
	log "starting $name"
	"start_${name//-/_}"
	restarted+=("$name")
}

ensure etcd
ensure gitea
ensure registry
wait_healthy etcd 30
ensure apiserver etcd
wait_healthy apiserver 90
if want_controller_manager; then
	ensure controller-manager apiserver
fi
wait_healthy gitea 90
wait_healthy registry 30
want_controller_manager && wait_healthy controller-manager 60

check_gitea_token
mirror_idpbuilder_secrets
write_env_sh
log "environment up in $((SECONDS - start)) s; source $state/env.sh"
