#!/usr/bin/env bash
# The registry benchmark of issue 7, in one run against the test environment's Gitea:
#
#   push        cold build + push of a ~500 MB and a ~20 MB context (benches/build_layer's
#               deterministic corpus) by `imagebuild build --push` (also with `layers: single`,
#               the size reference of the split layers), by `tar` + `crane append`
#               (go-containerregistry, default gzip) and by `tar | pigz` into an OCI layout
#               (umoci) + `skopeo copy`; every run pushes to a fresh repository on the same base
#   warm        the same push again (nothing changed), then with one file changed: the share of
#               the layer bytes uploaded again, and (when the test node is up) the bytes and
#               seconds of the node's pull of each image after the change
#   controller  kubectl apply of a ConfigMap + ImageBuild to Ready=True, N times in a row, then
#               M ImageBuilds at once; controller peak RSS (VmHWM)
#   profile     per-stage timers of our layer builder on the ~500 MB context, plus upload time
#   checks      registry checks (--registry-check-interval 10s) of BENCH_CHECKS (200) Ready
#               ImageBuilds over 60 s: checks, manifest HEADs at Gitea, API server requests and
#               controller cpu per ImageBuild per check, next to `crane digest` of each image
#               (what a hand-run or cron check does)
#   platforms   cold push of the ~500 MB context as one platform and as a two-platform index
#               (linux/amd64 + linux/arm64 children sharing the layer), runs alternating, on
#               the same two-platform base index; the ratio of the two, and the same pairs on a
#               one-file context (the second platform's fixed cost)
#   rollout     on the test node (tests/env/node-up.sh): a ConfigMap edit -> a new Pod of the
#               opted-in Deployment printing the new file (the controller rolls the new digest
#               out), N times (median, p95), and the rebuild (edit -> new status.imageRef) apart.
#               Not in the default set: BENCH_SECTIONS=rollout benches/run.sh
#
#   benches/run.sh                                  # everything, tables on stdout
#   BENCH_SECTIONS="push warm" benches/run.sh       # some sections only
#   BENCH_RUNS=3 benches/run.sh                     # cold runs per tool (fastest kept, default 2)
#   BENCH_PLATFORM_RUNS=5 benches/run.sh            # runs of each kind in platforms (default 10)
#   BENCH_REQUIRE_ENV=1 benches/run.sh              # fail if the test environment is not up
#                                                   # (shared machine: never start or stop it)
#   BENCH_SERIAL=50 BENCH_MANY=200 benches/run.sh   # controller run counts (these defaults)
#   BENCH_SIZES=small benches/run.sh                # cold pushes of the ~20 MB context only
#   BENCH_CONTEXT=~/src/tree benches/run.sh         # a real tree instead of the ~500 MB corpus
#                                                   # (copied once; warm edits its middle file)
#   BENCH_RUST_LOG=debug benches/run.sh             # log filter of the controller it runs (default info)
#   BENCH_ROLLOUTS=10 BENCH_SECTIONS=rollout benches/run.sh   # edits timed in rollout
#
# Results go to stdout and target/bench/results/ (raw timings, logs, stage timers). The
# machine is shared: read cpu seconds (user+sys) and the ratios between rows of one run, not
# absolute wall times. Needs apt (time, pigz, umoci, skopeo, jq, curl) and Go (crane); installs
# what is missing. Starts the test environment if it is not up and stops it again at the end;
# the controller it starts is stopped on exit. Every step has a time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

crane_version=v0.20.6
tool_cache=${IMAGEBUILD_TESTENV_CACHE:-$HOME/.cache/imagebuild-testenv}
sections=${BENCH_SECTIONS:-"push warm controller profile platforms checks"}
checks_count=${BENCH_CHECKS:-200}
runs=${BENCH_RUNS:-2}
platform_runs=${BENCH_PLATFORM_RUNS:-10}
sizes=${BENCH_SIZES:-"large small"}
serial=${BENCH_SERIAL:-50}
many=${BENCH_MANY:-200}
rollouts=${BENCH_ROLLOUTS:-10}
bench=$repo/target/bench
results=$bench/results
work=$bench/work
run_id=$(date -u +%H%M%S)-$$
mkdir -p "$results" "$work"

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
has_section() { [[ " $sections " == *" $1 "* ]]; }
# The sections that push the generated contexts (they need the build_layer binary and the base).
needs_contexts() { has_section push || has_section warm || has_section profile || has_section platforms; }

cleanup_steps=()
cleanup() {
  local step
  for step in "${cleanup_steps[@]}"; do eval "$step" || true; done
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------
install_tools() {
  local missing=()
  [ -x /usr/bin/time ] || missing+=(time)
  local tool
  for tool in pigz umoci skopeo jq curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    timeout 600 apt-get install -y "${missing[@]}" >/dev/null
  fi
  crane=$tool_cache/crane-$crane_version/bin/crane
  if [ ! -x "$crane" ]; then
    log "installing crane $crane_version from the Go module proxy"
    mkdir -p "$(dirname "$crane")"
    GOBIN=$(dirname "$crane") timeout 900 go install \
      "github.com/google/go-containerregistry/cmd/crane@$crane_version"
  fi
  log "building imagebuild and the build_layer benchmark (release)"
  timeout 1800 cargo build --release --bin imagebuild >&2
  imagebuild=${CARGO_TARGET_DIR:-$repo/target}/release/imagebuild
  needs_contexts || return 0
  layer_bench=$(timeout 1800 cargo bench --bench build_layer --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "build_layer")
      | .executable // empty' | tail -1)
  [ -x "$layer_bench" ] || { echo "benches/run.sh: no build_layer binary" >&2; exit 1; }
}

# --- environment -------------------------------------------------------------------------
start_env() {
  if ! bash tests/env/up.sh --check >/dev/null 2>&1; then
    if [ -n "${BENCH_REQUIRE_ENV:-}" ]; then
      echo "benches/run.sh: the test environment is not up (BENCH_REQUIRE_ENV: not starting it)" >&2
      exit 1
    fi
    log "starting the test environment"
    timeout 3600 bash tests/env/up.sh >&2
    cleanup_steps+=("bash '$repo/tests/env/down.sh' >&2")
  fi
  # shellcheck disable=SC1091
  source target/testenv/env.sh
  gitea=$IMAGEBUILD_TEST_GITEA
  owner=$IMAGEBUILD_TEST_GITEA_OWNER
  # crane (Go) trusts the Gitea certificate as a root; a CA:true cert may be its own leaf.
  cat /etc/ssl/certs/ca-certificates.crt "$IMAGEBUILD_TEST_GITEA_CA" >"$work/ca-bundle.pem"
  mkdir -p "$work/certs" "$work/docker"
  cp "$IMAGEBUILD_TEST_GITEA_CA" "$work/certs/ca.crt"
  export DOCKER_CONFIG=$work/docker SSL_CERT_FILE=$work/ca-bundle.pem
  "$crane" auth login "$gitea" -u "$IMAGEBUILD_TEST_GITEA_USER" \
    -p "$IMAGEBUILD_TEST_GITEA_PASSWORD" >/dev/null 2>&1
}

# --- measuring ---------------------------------------------------------------------------
# timed NAME COMMAND...: runs COMMAND with a 30-minute limit; writes NAME.{out,err} and sets
# wall, cpu (user+sys seconds of it and its children) and rss (peak, MB) for the caller.
# registry_cpu is the CPU Gitea spent meanwhile: it shares the 2 cores with the tool measured.
timed() {
  local name=$1
  shift
  local start end gitea_before
  gitea_before=$(gitea_cpu)
  start=$(date +%s.%N)
  /usr/bin/time -f '%U %S %M' -o "$results/$name.time" timeout 1800 "$@" \
    >"$results/$name.out" 2>"$results/$name.err"
  end=$(date +%s.%N)
  registry_cpu=$(awk -v a="$gitea_before" -v b="$(gitea_cpu)" 'BEGIN { printf "%.2f", b - a }')
  wall=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }')
  read -r user sys rss_kb <"$results/$name.time"
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  rss=$(awk -v k="$rss_kb" 'BEGIN { printf "%.1f", k / 1024 }')
}

# User+system seconds Gitea has used so far (0 when its pid file is not readable).
gitea_cpu() {
  local pid
  # The pid file holds the pid, then the binary's path.
  pid=$(head -1 "$repo/target/testenv/run/gitea.pid" 2>/dev/null) || { echo 0; return; }
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat" \
    2>/dev/null || echo 0
}

# Bytes of the layers a build of IMAGE added to its base (every layer after the base's one; all
# of them for an image of one layer), as the registry serves its manifest (of an index: its
# first child's; the children share the layers).
layer_size() {
  local manifest
  manifest=$("$crane" manifest "$1")
  if jq -e '.manifests' <<<"$manifest" >/dev/null; then
    manifest=$("$crane" manifest "${1%:*}@$(jq -r '.manifests[0].digest' <<<"$manifest")")
  fi
  jq 'if (.layers | length) > 1 then [.layers[1:][].size] | add else .layers[0].size end' <<<"$manifest"
}

# Layer digests and sizes of IMAGE, one "digest size" line each.
layer_list() {
  "$crane" manifest "$1" | jq -r '.layers[] | "\(.digest) \(.size)"'
}

# Bytes crane uploaded: the blobs it reports as pushed (not "existing"), sized from the manifest.
crane_uploaded() {
  local err=$1 image=$2 manifest digest total=0 size
  manifest=$("$crane" manifest "$image")
  for digest in $(grep -o 'pushed blob: sha256:[0-9a-f]*' "$err" | cut -d' ' -f3); do
    size=$(jq --arg d "$digest" '[.config, .layers[]] | map(select(.digest == $d)) | .[0].size // 0' \
      <<<"$manifest")
    total=$((total + size))
  done
  echo "$total"
}

imagebuild_file() { # FILE IMAGE [BASE] [SPEC LINE]
  {
    echo "apiVersion: imagebuild.dev/v1alpha1"
    echo "kind: ImageBuild"
    echo "metadata: {name: bench}"
    echo "spec:"
    echo "  context: {persistentVolumeClaim: {claimName: unused}}"
    echo "  image: $2"
    echo "  tags: [latest]"
    [ -z "${3:-}" ] || echo "  from: $3"
    [ -z "${4:-}" ] || echo "  $4"
  } >"$1"
}

ib_push() { # NAME CONTEXT IMAGE [SPEC LINE]
  imagebuild_file "$work/$1.yaml" "$3" "$base" "${4:-}"
  timed "$1" "$imagebuild" build -f "$work/$1.yaml" --context "$2" --push \
    --ca-file "$IMAGEBUILD_TEST_GITEA_CA" --username "$IMAGEBUILD_TEST_GITEA_USER" \
    --password-stdin <<<"$IMAGEBUILD_TEST_GITEA_PASSWORD"
  uploaded=$(grep -o '([0-9]* bytes uploaded' "$results/$1.err" | tr -dc 0-9)
  compressed=$(layer_size "$3:latest")
}

ib_zstd_push() { # NAME CONTEXT IMAGE: the opt-in zstd compression
  ib_push "$1" "$2" "$3" "compression: zstd"
}

ib_single_push() { # NAME CONTEXT IMAGE: the whole context in one layer
  ib_push "$1" "$2" "$3" "layers: single"
}

crane_push() { # NAME CONTEXT IMAGE
  timed "$1" bash -c 'tar -c --sort=name -C "$1" -f "$2" . && "$3" append -b "$4" -f "$2" -t "$5"' \
    crane "$2" "$work/$1.tar" "$crane" "$base" "$3:latest"
  rm -f "$work/$1.tar"
  uploaded=$(crane_uploaded "$results/$1.err" "$3:latest")
  compressed=$(layer_size "$3:latest")
}

skopeo_push() { # NAME CONTEXT IMAGE
  timed "$1" "$0" __skopeo_push "$2" "$work/$1.oci" "$3:latest"
  rm -rf "$work/$1.oci"
  compressed=$(layer_size "$3:latest")
  # skopeo uploads every blob of a fresh layout: the layer and the config.
  uploaded=$((compressed + $("$crane" manifest "$3:latest" | jq '.config.size')))
}

# The skopeo reference, run under `timed` as one process tree: `tar | pigz -6` into a layout
# that umoci made, then `skopeo copy` to the registry. umoci's own add-layer only takes
# uncompressed tars, so the pigz blob is linked into the layout here (config, manifest, index).
skopeo_layout_push() {
  local context=$1 layout=$2 dest=$3 blobs diff_id digest config manifest
  umoci init --layout "$layout"
  umoci new --image "$layout:latest"
  blobs=$layout/blobs/sha256
  # One pass: the tar stream goes to pigz through a fifo and to sha256sum (the diffID).
  mkfifo "$layout/tar.fifo"
  pigz -6 -p 2 <"$layout/tar.fifo" >"$layout/layer" &
  local pigz_pid=$!
  diff_id=$(tar -c --sort=name -C "$context" . | tee "$layout/tar.fifo" | sha256sum | cut -d' ' -f1)
  wait "$pigz_pid"
  rm "$layout/tar.fifo"
  digest=$(sha256sum "$layout/layer" | cut -d' ' -f1)
  mv "$layout/layer" "$blobs/$digest"
  manifest=$(jq -r '.manifests[0].digest' "$layout/index.json" | cut -d: -f2)
  config=$(jq -r '.config.digest' "$blobs/$manifest" | cut -d: -f2)
  jq -c --arg d "sha256:$diff_id" '.rootfs.diff_ids += [$d]' "$blobs/$config" >"$layout/c"
  local new_config size_c size_l
  new_config=$(sha256sum "$layout/c" | cut -d' ' -f1)
  size_c=$(stat -c %s "$layout/c")
  size_l=$(stat -c %s "$blobs/$digest")
  mv "$layout/c" "$blobs/$new_config"
  jq -c --arg c "sha256:$new_config" --argjson cs "$size_c" --arg l "sha256:$digest" \
    --argjson ls "$size_l" \
    '.config.digest = $c | .config.size = $cs | .layers += [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]' \
    "$blobs/$manifest" >"$layout/m"
  local new_manifest size_m
  new_manifest=$(sha256sum "$layout/m" | cut -d' ' -f1)
  size_m=$(stat -c %s "$layout/m")
  mv "$layout/m" "$blobs/$new_manifest"
  jq -c --arg m "sha256:$new_manifest" --argjson ms "$size_m" \
    '.manifests[0].digest = $m | .manifests[0].size = $ms' "$layout/index.json" >"$layout/i"
  mv "$layout/i" "$layout/index.json"
  skopeo copy --quiet --dest-cert-dir "$work/certs" \
    --dest-creds "$IMAGEBUILD_TEST_GITEA_USER:$IMAGEBUILD_TEST_GITEA_PASSWORD" \
    "oci:$layout:latest" "docker://$dest"
}
if [ "${1:-}" = __skopeo_push ]; then
  shift
  # shellcheck disable=SC1091
  source target/testenv/env.sh
  work=$repo/target/bench/work
  skopeo_layout_push "$@"
  exit
fi

# --- sections ----------------------------------------------------------------------------
rows=()
row() { rows+=("$1;$wall;$cpu;$rss;$uploaded;$compressed;$registry_cpu"); }

# Prints the collected rows as a Markdown table (ratios against the crane row above them),
# appends it to the summary and starts a new table.
print_rows() { # TITLE
  table "$1" | tee -a "$results/summary.md"
  rows=()
}

table() {
  echo
  echo "## $1"
  printf '| %-28s | %7s | %7s | %8s | %13s | %13s | %9s | %9s | %9s |\n' case "wall s" \
    "cpu s" "RSS MB" "uploaded B" "compressed B" "wall/cr" "cpu/cr" "gitea cpu"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  local r label w c m u z g ref_w ref_c
  for r in "${rows[@]}"; do
    IFS=';' read -r label w c m u z g <<<"$r"
    if [[ $label == *crane* ]]; then ref_w=$w ref_c=$c; fi
    printf '| %-28s | %7s | %7s | %8s | %13s | %13s | %9s | %9s | %9s |\n' "$label" "$w" "$c" \
      "$m" "$u" "$z" "$(awk -v a="${ref_w:-0}" -v b="$w" 'BEGIN { if (b > 0 && a > 0) printf "%.2fx", a / b; else print "-" }')" \
      "$(awk -v a="${ref_c:-0}" -v b="$c" 'BEGIN { if (b > 0 && a > 0) printf "%.2fx", a / b; else print "-" }')" \
      "$g"
  done
}

prepare_contexts() {
  log "generating the contexts (reused when present)"
  "$layer_bench" --generate "$bench/context"
  "$layer_bench" --generate-small "$bench/context-small"
  large=$bench/context
  if [ -n "${BENCH_CONTEXT:-}" ]; then
    # A real tree, copied once (the warm section edits a file of it).
    large=$bench/context-real
    if [ "$(cat "$large.source" 2>/dev/null)" != "$BENCH_CONTEXT" ]; then
      log "copying $BENCH_CONTEXT to $large"
      rm -rf "$large" && mkdir -p "$large" && cp -a "$BENCH_CONTEXT/." "$large/"
      echo "$BENCH_CONTEXT" >"$large.source"
    fi
  fi
  large_mb=$(($(du -sb "$large" | cut -f1) / 1000000))
  small_mb=$(($(du -sb "$bench/context-small" | cut -f1) / 1000000))
  # Warm the page cache so every tool reads the same cached files.
  tar -c -C "$bench" "${large#"$bench"/}" context-small | wc -c >/dev/null
}

push_base() {
  mkdir -p "$work/base-context"
  echo "benchmark base" >"$work/base-context/BASE"
  base=$gitea/$owner/bench-base-$run_id:latest
  local saved=$base
  base=""
  ib_push base "$work/base-context" "${saved%:latest}"
  base=$saved
}

section_push() {
  local size context n tool best
  for size in $sizes; do
    context=$large
    [ $size = large ] || context=$bench/context-small
    for tool in crane imagebuild imagebuild_single imagebuild_zstd skopeo; do
      best=""
      for ((n = 1; n <= runs; n++)); do
        local name=cold-$size-$tool-$n image=$gitea/$owner/bench-$run_id-$size-${tool//_/-}-$n
        log "cold $size $tool run $n"
        "${tool/imagebuild/ib}_push" "$name" "$context" "$image"
        # Fastest of N by wall; keep that run's figures.
        if [ -z "$best" ] || awk -v a="$best" -v b="$wall" 'BEGIN { exit !(b < a) }'; then
          best=$wall
          best_row="$tool;$wall;$cpu;$rss;$uploaded;$compressed;$registry_cpu"
        fi
        eval "last_${size}_${tool}_image=$image"
      done
      IFS=';' read -r _ wall cpu rss uploaded compressed registry_cpu <<<"$best_row"
      local label=$tool
      [ $tool != imagebuild ] || label="imagebuild build --push"
      [ $tool != imagebuild_zstd ] || label="imagebuild, zstd (opt-in)"
      [ $tool != imagebuild_single ] || label="imagebuild, layers: single"
      [ $tool != crane ] || label="tar + crane append"
      [ $tool != skopeo ] || label="tar + pigz, umoci, skopeo"
      row "$label"
    done
    local mb=$large_mb
    [ $size = large ] || mb=$small_mb
    print_rows "Cold build + push, ${mb} MB context (fastest of $runs by wall)"
  done
}

section_warm() {
  local image_ib=${last_large_imagebuild_image:-$gitea/$owner/bench-$run_id-warm-imagebuild}
  local image_cr=${last_large_crane_image:-$gitea/$owner/bench-$run_id-warm-crane}
  local changed=$large/src/module-000/part-0/file-000.rs saved=$work/changed.orig
  if [ -n "${BENCH_CONTEXT:-}" ]; then
    # The middle text file of the real tree, in path order.
    changed=$large/$(cd "$large" && find . -type f -size +1k -size -64k | LC_ALL=C sort | awk '{ f[NR] = $0 } END { print f[int(NR / 2)] }')
  fi
  if [ -z "${last_large_imagebuild_image:-}" ]; then
    log "warm: first pushes (no push section ran)"
    ib_push warm-first-imagebuild "$large" "$image_ib"
    crane_push warm-first-crane "$large" "$image_cr"
  fi
  log "warm: nothing changed"
  crane_push warm-same-crane "$large" "$image_cr"
  row "crane, nothing changed"
  ib_push warm-same-imagebuild "$large" "$image_ib"
  row "imagebuild, nothing changed"
  log "warm: one file changed"
  node_pull_start "$image_ib:latest" "$image_cr:latest"
  cp -p "$changed" "$saved"
  cleanup_steps+=("cp -p '$saved' '$changed'")
  echo "// changed by benches/run.sh $run_id" >>"$changed"
  crane_push warm-one-crane "$large" "$image_cr"
  row "crane, one file changed"
  local crane_layers=$compressed
  ib_push warm-one-imagebuild "$large" "$image_ib"
  row "imagebuild, one file changed"
  cp -p "$saved" "$changed"
  print_rows "Warm push of the ${large_mb} MB context to the same repository"
  awk -v u="$uploaded" -v c="$compressed" -v n="$(layer_list "$image_ib:latest" | wc -l)" \
    'BEGIN { printf "\nOne file changed: imagebuild uploaded %d bytes, %.2f%% of its %d bytes of layers (%d layers, the base\x27s included).\n", u, 100 * u / c, c, n }' |
    tee -a "$results/summary.md"
  echo "crane uploaded its whole layer again: $crane_layers bytes." | tee -a "$results/summary.md"
  node_pull_finish "$image_ib:latest" "$image_cr:latest"
}

# What a node pulls after the one-file change: with the test node up (tests/env/node-up.sh;
# it is not started for this), ctr on the node's containerd pulls both images before the change
# and again after it; the bytes it fetched the second time (blobs new to its content store) and
# the seconds that pull took, for imagebuild's image and crane's.
node_pull_ready=""
ctr_bench() {
  timeout 600 ctr --address "$IMAGEBUILD_TEST_CONTAINERD_SOCKET" -n imagebuild-bench "$@"
}
ctr_pull() { # IMAGE
  ctr_bench images pull --platform linux/amd64 --tlscacert "$IMAGEBUILD_TEST_GITEA_CA" \
    --user "$IMAGEBUILD_TEST_GITEA_USER:$IMAGEBUILD_TEST_GITEA_PASSWORD" "$1" >/dev/null
}
node_pull_start() { # IMAGE...
  if ! bash tests/env/node-up.sh --check >/dev/null 2>&1; then
    log "warm: the test node is not up; no node pull figures"
    return 0
  fi
  # shellcheck disable=SC1091
  source target/testenv/node.sh
  node_pull_ready=1
  local image
  for image in "$@"; do
    log "warm: the node pulls $image before the change"
    ctr_pull "$image"
    cleanup_steps+=("ctr_bench images rm --sync '$image' >/dev/null 2>&1")
  done
}
node_pull_finish() { # IMAGE...
  [ -n "$node_pull_ready" ] || return 0
  local image before started seconds fetched
  echo | tee -a "$results/summary.md"
  for image in "$@"; do
    before=$(ctr_bench content ls -q | sort)
    started=$(date +%s.%N)
    ctr_pull "$image"
    seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    fetched=$(layer_list "$image" | sort | join -v 1 - <(echo "$before") | awk '{ n++; s += $2 } END { printf "%d bytes in %d layers", s, n }')
    echo "Node pull of $image after the change: $fetched fetched, $seconds s." | tee -a "$results/summary.md"
  done
}

# Installs the chart with no replicas (as tests/controller_support does) and runs the release
# controller on this host with the chart's ServiceAccount token and rendered configuration.
start_controller() {
  local dir=$work/controller profile sa token port
  mkdir -p "$dir"
  profile=$(jq -cn --arg h "$gitea" '[{host: $h,
    caSecret: {namespace: "default", name: "idpbuilder-cert", key: "ca.crt"},
    credentialsSecret: {namespace: "gitea", name: "gitea-credential",
                        usernameKey: "username", passwordKey: "password"}}]')
  timeout 300 helm upgrade --install imagebuild charts/imagebuild -n imagebuild-system \
    --create-namespace --wait=false --set-json "registries=$profile" --set replicaCount=0 >/dev/null
  sa=$(kubectl get serviceaccount -n imagebuild-system -l app.kubernetes.io/instance=imagebuild \
    -o 'jsonpath={.items[0].metadata.name}')
  kubectl get configmap -n imagebuild-system -l app.kubernetes.io/instance=imagebuild -o json |
    jq -r '[.items[].data["config.yaml"] // empty][0]' >"$dir/config.yaml"
  token=$(kubectl create token "$sa" -n imagebuild-system --duration 2h)
  kubectl config view --raw --minify -o json | jq --arg t "$token" '{apiVersion: "v1",
    kind: "Config", clusters: [{name: "test", cluster: .clusters[0].cluster}],
    users: [{name: "controller", user: {token: $t}}],
    contexts: [{name: "controller", context: {cluster: "test", user: "controller"}}],
    "current-context": "controller"}' >"$dir/kubeconfig"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  KUBECONFIG=$dir/kubeconfig POD_NAMESPACE=imagebuild-system RUST_LOG=${BENCH_RUST_LOG:-info} \
    "$imagebuild" controller --config "$dir/config.yaml" --listen "127.0.0.1:$port" \
    --work-dir "$dir" --identity "bench-$run_id" ${controller_extra:-} \
    >"$results/controller.log" 2>&1 &
  controller_pid=$!
  controller_port=$port
  cleanup_steps+=("kill $controller_pid 2>/dev/null; wait $controller_pid 2>/dev/null")
  local i
  for ((i = 0; i < 300; i++)); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "benches/run.sh: the controller did not become ready; see $results/controller.log" >&2
  exit 1
}

manifests() { # NS NAME BODY
  cat <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: $2-src, namespace: $1}
data:
  index.html: "$3"
---
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {name: $2, namespace: $1}
spec:
  context:
    configMaps: [{name: $2-src}]
  image: $gitea/$owner/bench-$run_id-$2
  tags: [latest]
EOF
}

section_controller() {
  start_controller
  local ns=bench-$run_id i start end
  kubectl create namespace "$ns" >/dev/null
  cleanup_steps+=("timeout 300 kubectl delete namespace '$ns' --wait=false >/dev/null 2>&1")
  # What one kubectl call costs here, included in every apply -> Ready figure below.
  start=$(date +%s.%N)
  kubectl get namespace "$ns" >/dev/null
  kubectl_cost=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')
  log "controller: $serial ImageBuilds one after another"
  : >"$results/apply-to-ready.txt"
  local gitea_start serial_gitea many_gitea
  gitea_start=$(gitea_cpu)
  for ((i = 1; i <= serial; i++)); do
    manifests "$ns" "one-$i" "<h1>run $run_id $i</h1>" >"$work/one.yaml"
    start=$(date +%s.%N)
    kubectl apply -f "$work/one.yaml" >/dev/null
    kubectl wait -n "$ns" --for=condition=Ready=True "imagebuild/one-$i" --timeout=120s >/dev/null
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }' >>"$results/apply-to-ready.txt"
  done
  read -r median p95 fastest slowest < <(sort -n "$results/apply-to-ready.txt" | awk '
    { v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      p = v[int(NR * 0.95 + 0.999)]; printf "%.3f %.3f %.3f %.3f\n", m, p, v[1], v[NR] }')
  serial_gitea=$(awk -v a="$gitea_start" -v b="$(gitea_cpu)" 'BEGIN { printf "%.1f", b - a }')
  log "controller: $many ImageBuilds at once"
  : >"$work/many.yaml"
  for ((i = 1; i <= many; i++)); do
    manifests "$ns" "many-$i" "<h1>many $run_id $i</h1>" >>"$work/many.yaml"
    echo "---" >>"$work/many.yaml"
  done
  gitea_start=$(gitea_cpu)
  start=$(date +%s.%N)
  kubectl apply -f "$work/many.yaml" >/dev/null
  # Until every one has settled (Ready True or False): a failed build must not hang the run.
  local counts settled=0 deadline=$((SECONDS + 900))
  while ((SECONDS < deadline)); do
    counts=$(kubectl get imagebuild -n "$ns" -o json | jq -r '[.items[]
      | select(.metadata.name | startswith("many-"))
      | [.status.conditions[]? | select(.type == "Ready") | .status][0] // "Unknown"]
      | "\(map(select(. == "True")) | length) \(map(select(. == "False")) | length)"')
    read -r ready_now failed_now <<<"$counts"
    if ((ready_now + failed_now >= many)); then settled=1 && break; fi
    sleep 0.5
  done
  end=$(date +%s.%N)
  local waited=settled
  ((settled)) || waited="not settled in 900 s"
  kubectl get imagebuild -n "$ns" -o json | jq -r '.items[] | select(.status.phase == "Failed")
    | "\(.metadata.name): \(.status.conditions[]? | select(.type == "Ready") | .message)"' \
    >"$results/many-failed.txt"
  many_gitea=$(awk -v a="$gitea_start" -v b="$(gitea_cpu)" 'BEGIN { printf "%.1f", b - a }')
  local ready_count total hwm
  ready_count=$(kubectl get imagebuild -n "$ns" -o json | jq '[.items[] | select(.metadata.name |
    startswith("many-")) | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length')
  total=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }')
  hwm=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$controller_pid/status")
  local controller_cpu
  controller_cpu=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' \
    "/proc/$controller_pid/stat")
  {
    echo
    echo "## Controller (release build, on this host, chart's ServiceAccount)"
    echo "| measure | value |"
    echo "|---|---:|"
    echo "| apply -> Ready, median of $serial | ${median} s |"
    echo "| apply -> Ready, p95 of $serial | ${p95} s |"
    echo "| apply -> Ready, fastest / slowest | ${fastest} / ${slowest} s |"
    echo "| one kubectl call (included twice in each figure above) | ${kubectl_cost} s |"
    echo "| $many applied at once: Ready | $ready_count of $many ($waited; failures in many-failed.txt) |"
    echo "| Gitea cpu during the $serial one after another | ${serial_gitea} s |"
    echo "| $many applied at once: apply -> all Ready | ${total} s |"
    echo "| Gitea cpu during the $many at once | ${many_gitea} s |"
    echo "| controller peak RSS (VmHWM) after all runs | ${hwm} MB |"
    echo "| controller cpu over both parts | ${controller_cpu} s |"
  } | tee -a "$results/summary.md"
}

# One platform vs two of the same inputs: the two-platform index shares the layer between its
# children, so it should cost a second config, a second manifest and the index on top (the
# issue's bound: at most 5% more wall time on the 500 MB context). Both kinds build `from:` one
# two-platform base index (the tiny base for linux/amd64 and linux/arm64): `platform:
# linux/amd64` picks one child of it, `platforms: [linux/amd64, linux/arm64]` both. Runs
# alternate between the kinds so that a change in the machine's load falls on both; the table
# keeps the fastest of N by wall, the lines below it the medians and the median of the ratios
# within back-to-back pairs. The same pairs on a one-file context give the fixed cost of the
# second platform (registry round trips), which does not grow with the context.
median() {
  sort -n | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# platform_pairs TAG CONTEXT: N alternating pushes of each kind; sets row_one, row_two (the
# fastest of each as row() fields) and writes each run's "wall cpu" to platforms-TAG-{one,two}.txt.
platform_pairs() {
  local tag=$1 context=$2 n kind name image best_one="" best_two="" this
  : >"$results/platforms-$tag-one.txt"
  : >"$results/platforms-$tag-two.txt"
  for ((n = 1; n <= platform_runs; n++)); do
    for kind in one two; do
      name=platforms-$tag-$kind-$n
      image=$gitea/$owner/bench-$run_id-platforms-$tag-$kind-$n
      log "platforms: $tag context, $kind, run $n"
      if [ "$kind" = one ]; then
        ib_push "$name" "$context" "$image" "platform: linux/amd64"
      else
        ib_push "$name" "$context" "$image" "platforms: [linux/amd64, linux/arm64]"
        [ "$("$crane" manifest "$image:latest" | jq '.manifests | length')" = 2 ] || {
          echo "benches/run.sh: $image:latest is not a two-platform index" >&2
          exit 1
        }
      fi
      echo "$wall $cpu" >>"$results/platforms-$tag-$kind.txt"
      this="$wall;$cpu;$rss;$uploaded;$compressed;$registry_cpu"
      if [ "$kind" = one ]; then
        if [ -z "$best_one" ] || awk -v a="$best_one" -v b="$wall" 'BEGIN { exit !(b < a) }'; then
          best_one=$wall row_one=$this
        fi
      elif [ -z "$best_two" ] || awk -v a="$best_two" -v b="$wall" 'BEGIN { exit !(b < a) }'; then
        best_two=$wall row_two=$this
      fi
    done
  done
}

# platform_summary TAG: the lines under the table for one context.
platform_summary() {
  local tag=$1 one=$results/platforms-$1-one.txt two=$results/platforms-$1-two.txt
  local w1 w2 c1 c2 u1 u2 med_one med_two med_pair med_diff
  IFS=';' read -r w1 c1 _ u1 _ _ <<<"$row_one"
  IFS=';' read -r w2 c2 _ u2 _ _ <<<"$row_two"
  med_one=$(cut -d' ' -f1 "$one" | median)
  med_two=$(cut -d' ' -f1 "$two" | median)
  # Run n of each kind ran back to back: the two share the machine's load.
  med_pair=$(paste -d' ' "$one" "$two" | awk '{ printf "%.4f\n", $3 / $1 }' | median)
  med_diff=$(paste -d' ' "$one" "$two" | awk '{ printf "%.3f\n", $3 - $1 }' | median)
  echo "- wall, fastest: $w2 / $w1 s = $(awk -v a="$w2" -v b="$w1" 'BEGIN { printf "%.3f", a / b }')"
  echo "- wall, median of $platform_runs: $med_two / $med_one s = $(awk -v a="$med_two" -v b="$med_one" 'BEGIN { printf "%.3f", a / b }')"
  echo "- wall, median over the $platform_runs back-to-back pairs: ratio $med_pair, difference $med_diff s"
  echo "- cpu (fastest runs): $c2 / $c1 s = $(awk -v a="$c2" -v b="$c1" 'BEGIN { printf "%.3f", a / b }')"
  echo "- uploaded: $u2 / $u1 B (+$((u2 - u1)) B)"
}

section_platforms() {
  local saved=$base index_base=$gitea/$owner/bench-base-index-$run_id row_one row_two
  base=""
  ib_push base-index "$work/base-context" "$index_base" "platforms: [linux/amd64, linux/arm64]"
  base=$index_base:latest
  local large_one large_two
  platform_pairs large "$large"
  large_one=$row_one large_two=$row_two
  mkdir -p "$work/one-file"
  echo "one file" >"$work/one-file/FILE"
  platform_pairs tiny "$work/one-file"
  base=$saved
  local tiny_one=$row_one tiny_two=$row_two
  IFS=';' read -r wall cpu rss uploaded compressed registry_cpu <<<"$large_one"
  row "${large_mb} MB, platform: amd64"
  IFS=';' read -r wall cpu rss uploaded compressed registry_cpu <<<"$large_two"
  row "${large_mb} MB, 2 platforms"
  IFS=';' read -r wall cpu rss uploaded compressed registry_cpu <<<"$tiny_one"
  row "one file, platform: amd64"
  IFS=';' read -r wall cpu rss uploaded compressed registry_cpu <<<"$tiny_two"
  row "one file, 2 platforms"
  print_rows "Cold build + push: one platform vs a two-platform index (fastest of $platform_runs by wall)"
  {
    echo
    echo "Two platforms / one platform, ${large_mb} MB context (each run: platforms-large-{one,two}.txt):"
    row_one=$large_one row_two=$large_two platform_summary large
    echo
    echo "The same on a one-file context (the fixed cost of the second platform):"
    row_one=$tiny_one row_two=$tiny_two platform_summary tiny
  } | tee -a "$results/summary.md"
}

section_profile() {
  log "profile: stage timers of the layer builder on the ${large_mb} MB context"
  timed profile-layer "$layer_bench" "$large" --out "$work"
  local stages layer_wall layer_cpu layer_rss push_wall
  stages=$(sed -n 's/^stages=//p' "$results/profile-layer.out")
  layer_wall=$wall layer_cpu=$cpu layer_rss=$rss
  imagebuild_file "$work/profile.yaml" "$gitea/$owner/bench-$run_id-profile"
  timed profile-push "$imagebuild" build -f "$work/profile.yaml" --context "$large" \
    --push --ca-file "$IMAGEBUILD_TEST_GITEA_CA" --username "$IMAGEBUILD_TEST_GITEA_USER" \
    --password-stdin <<<"$IMAGEBUILD_TEST_GITEA_PASSWORD"
  push_wall=$wall
  {
    echo
    echo "## Where the time goes (${large_mb} MB context, one run)"
    echo "- layer builder alone (build_layer bench binary, default gzip level): ${layer_wall} s wall,"
    echo "  ${layer_cpu} s cpu, ${layer_rss} MB peak; stages (thread wall time, so on a busy machine"
    echo "  they include waiting for a core): $stages"
    echo "- build + push (same inputs, fresh repository): ${push_wall} s wall, ${cpu} s cpu,"
    echo "  ${rss} MB peak; Gitea used ${registry_cpu} s cpu meanwhile"
    echo "- upload and registry round trips = build + push - layer: $(awk -v a="$push_wall" -v b="$layer_wall" 'BEGIN { printf "%.2f", a - b }') s"
  } | tee -a "$results/summary.md" | tee "$results/profile.txt"
}

# Registry checks: BENCH_CHECKS Ready ImageBuilds, a controller checking them every 10 s, 60 s
# of it measured once the first round is over; then `crane digest` of each image, the
# reference a user without the controller would run.
section_checks() {
  controller_extra="--registry-check-interval 10s"
  start_controller
  controller_extra=""
  local ns=bench-checks-$run_id i
  kubectl create namespace "$ns" >/dev/null
  cleanup_steps+=("timeout 300 kubectl delete namespace '$ns' --wait=false >/dev/null 2>&1")
  : >"$work/checks.yaml"
  for ((i = 1; i <= checks_count; i++)); do
    manifests "$ns" "check-$i" "<h1>check $run_id $i</h1>" >>"$work/checks.yaml"
    echo "---" >>"$work/checks.yaml"
  done
  log "checks: $checks_count ImageBuilds to Ready"
  kubectl apply -f "$work/checks.yaml" >/dev/null
  local ready=0 deadline=$((SECONDS + 900))
  while ((SECONDS < deadline)); do
    ready=$(kubectl get imagebuild -n "$ns" -o json | jq '[.items[] | select(.status.phase == "Succeeded")] | length')
    ((ready >= checks_count)) && break
    sleep 1
  done
  ((ready >= checks_count)) || { echo "benches/run.sh: only $ready of $checks_count Ready" >&2; exit 1; }
  local all
  all=$(kubectl get imagebuild -A -o json | jq '[.items[] | select(.status.phase == "Succeeded")] | length')
  sleep 12
  local gitea_log=$repo/target/testenv/logs/gitea.log hz
  hz=$(getconf CLK_TCK)
  checks_now() { curl -fs "http://127.0.0.1:$controller_port/metrics" |
    awk '/^imagebuild_registry_checks_total/ { s += $NF } END { print s + 0 }'; }
  heads_now() { grep -c 'completed HEAD /v2/.*/manifests/' "$gitea_log" || true; }
  api_now() { kubectl get --raw /metrics | awk '/^apiserver_request_total/ { s += $NF } END { print s + 0 }'; }
  cpu_now() { awk -v hz="$hz" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$controller_pid/stat"; }
  local c0 h0 a0 p0 g0 c1 h1 a1 p1 g1
  c0=$(checks_now) h0=$(heads_now) a0=$(api_now) p0=$(cpu_now) g0=$(gitea_cpu)
  log "checks: measuring 60 s"
  sleep 60
  c1=$(checks_now) h1=$(heads_now) a1=$(api_now) p1=$(cpu_now) g1=$(gitea_cpu)
  kubectl get imagebuild -n "$ns" -o json | jq -r '.items[].status.imageRef' |
    sed 's/@.*/:latest/' >"$work/check-refs.txt"
  # The controller stops first, so Gitea's log and cpu during crane's round are crane's alone.
  kill "$controller_pid" 2>/dev/null || true
  wait "$controller_pid" 2>/dev/null || true
  controller_pid=""
  local h2 crane_heads
  h2=$(heads_now)
  log "checks: crane digest of each image"
  timed crane-digests bash -c 'while read -r ref; do "$1" digest "$ref" >/dev/null || exit 1; done <"$2"' \
    crane "$crane" "$work/check-refs.txt"
  crane_heads=$(($(heads_now) - h2))
  {
    echo
    echo "## Registry checks: $checks_count Ready ImageBuilds ($all in the cluster), interval 10 s, 60 s measured"
    echo "| measure | imagebuild controller | crane digest, once per image |"
    echo "|---|---:|---:|"
    awk -v c0="$c0" -v c1="$c1" -v n="$all" -v h0="$h0" -v h1="$h1" -v a0="$a0" -v a1="$a1" \
      -v p0="$p0" -v p1="$p1" -v g0="$g0" -v g1="$g1" -v cw="$wall" -v cc="$cpu" \
      -v cg="$registry_cpu" -v ch="$crane_heads" -v m="$checks_count" 'BEGIN {
        c = c1 - c0
        printf "| checks | %d (%.2f per ImageBuild per interval) | %d |\n", c, c / n / 6, m
        printf "| manifest HEADs at Gitea per check | %.2f | %.2f |\n", (h1 - h0) / c, ch / m
        printf "| API server requests per check | %.2f | 0 |\n", (a1 - a0) / c
        printf "| cpu per check, checker | %.2f ms | %.2f ms |\n", (p1 - p0) * 1000 / c, cc * 1000 / m
        printf "| cpu per check, Gitea | %.2f ms | %.2f ms |\n", (g1 - g0) * 1000 / c, cg * 1000 / m
        printf "| wall for one round of %d | spread over 10 s | %.2f s |\n", m, cw
      }'
  } | tee -a "$results/summary.md"
}

# ConfigMap edit -> a new Pod printing the new file, on the test node. The release controller
# runs on this host (start_controller); the Deployment opts in with the rollout label and
# annotation and starts on busybox; each edit is timed until the ImageBuild names a new digest
# (the rebuild) and until a Pod running that digest has printed the edited file. Each poll is a
# kubectl call (its cost is printed), so the figures are upper bounds by about that much.
rollout_manifests() { # NS BODY
  cat <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: site-src, namespace: $1}
data: {index.html: "$2"}
---
apiVersion: imagebuild.dev/v1alpha1
kind: ImageBuild
metadata: {name: site, namespace: $1}
spec:
  context: {configMaps: [{name: site-src}]}
  from: $IMAGEBUILD_TEST_BUSYBOX_IMAGE
  destinationPath: /srv
  image: $gitea/$owner/bench-$run_id-rollout
  tags: [latest]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: site
  namespace: $1
  labels: {imagebuild.dev/rollout: "true"}
  annotations: {imagebuild.dev/images: site=site}
spec:
  selector: {matchLabels: {app: site}}
  template:
    metadata: {labels: {app: site}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: site
        image: $IMAGEBUILD_TEST_BUSYBOX_IMAGE
        command: [sh, -c, "cat /srv/index.html; echo; exec sleep 3600"]
        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
        resources: {limits: {cpu: 100m, memory: 32Mi}}
EOF
}

# The Pod in NS running REF that has printed BODY, if any.
printing_pod() { # NS REF BODY
  local name
  for name in $(kubectl get pods -n "$1" -l app=site -o json | jq -r --arg r "$2" \
    '.items[] | select(.spec.containers[0].image == $r and .status.phase == "Running") | .metadata.name'); do
    if kubectl logs -n "$1" "$name" 2>/dev/null | grep -qF "$3"; then
      echo "$name"
      return 0
    fi
  done
  return 0
}

# median, p95, fastest and slowest of the numbers in FILE, one line.
stats() { # FILE
  sort -n "$1" | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    p = v[int(NR * 0.95 + 0.999)]; printf "%.2f s (p95 %.2f, fastest %.2f, slowest %.2f)", m, p, v[1], v[NR] }'
}

section_rollout() {
  if ! bash tests/env/node-up.sh --check >/dev/null 2>&1; then
    if [ -n "${BENCH_REQUIRE_ENV:-}" ]; then
      echo "benches/run.sh: the test node is not up (BENCH_REQUIRE_ENV: not starting it)" >&2
      exit 1
    fi
    log "rollout: starting the test node"
    timeout 3600 bash tests/env/node-up.sh >&2
    cleanup_steps+=("bash '$repo/tests/env/node-down.sh' >&2")
  fi
  # shellcheck disable=SC1091
  source target/testenv/node.sh
  [ -n "${controller_pid:-}" ] || start_controller
  local ns=bench-rollout-$run_id i start built done_at ref previous="" body pod deadline
  kubectl create namespace "$ns" >/dev/null
  cleanup_steps+=("timeout 300 kubectl delete namespace '$ns' --wait=false >/dev/null 2>&1")
  start=$(date +%s.%N)
  kubectl get namespace "$ns" >/dev/null
  kubectl_cost=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')
  : >"$results/rollout-build.txt"
  : >"$results/rollout-pod.txt"
  # Edit 0 is the first build and the Deployment's first rollout; not counted.
  for ((i = 0; i <= rollouts; i++)); do
    body="rollout $run_id edit $i"
    log "rollout: edit $i of $rollouts"
    rollout_manifests "$ns" "$body" >"$work/rollout.yaml"
    start=$(date +%s.%N)
    kubectl apply -f "$work/rollout.yaml" >/dev/null
    deadline=$((SECONDS + 300))
    ref=""
    while ((SECONDS < deadline)); do
      ref=$(kubectl get imagebuild site -n "$ns" -o json | jq -r 'select(.status.phase == "Succeeded"
        and .status.observedGeneration == .metadata.generation) | .status.imageRef // empty')
      [ -n "$ref" ] && [ "$ref" != "$previous" ] && break
      ref=""
      sleep 0.1
    done
    [ -n "$ref" ] || { echo "benches/run.sh: edit $i was not built in 300 s" >&2; exit 1; }
    built=$(date +%s.%N)
    pod=""
    while ((SECONDS < deadline)); do
      pod=$(printing_pod "$ns" "$ref" "$body")
      [ -n "$pod" ] && break
      sleep 0.1
    done
    [ -n "$pod" ] || { echo "benches/run.sh: no Pod of $ref printed edit $i in 300 s" >&2; exit 1; }
    done_at=$(date +%s.%N)
    previous=$ref
    ((i == 0)) && continue
    awk -v s="$start" -v e="$built" 'BEGIN { printf "%.3f\n", e - s }' >>"$results/rollout-build.txt"
    awk -v s="$start" -v e="$done_at" 'BEGIN { printf "%.3f\n", e - s }' >>"$results/rollout-pod.txt"
  done
  # The build itself, as the controller times it (start of the build to the pushed image),
  # without kubectl apply, the watch and the polls: the mean of every build of the section.
  local build_mean
  build_mean=$(curl -fs "http://127.0.0.1:$controller_port/metrics" | awk '
    /^imagebuild_build_duration_seconds_sum/ { s = $NF } /^imagebuild_build_duration_seconds_count/ { c = $NF }
    END { if (c) printf "%.3f s (%d builds)", s / c, c }')
  {
    echo
    echo "## Rollout on the test node (release controller on this host, $rollouts ConfigMap edits)"
    echo "| measure | median of $rollouts |"
    echo "|---|---:|"
    echo "| ConfigMap edit -> new status.imageRef (rebuild) | $(stats "$results/rollout-build.txt") |"
    echo "| ConfigMap edit -> new Pod printing the new file | $(stats "$results/rollout-pod.txt") |"
    echo "| the build itself, start to pushed image (controller's imagebuild_build_duration_seconds, mean) | ${build_mean} |"
    echo "| one kubectl call (each poll makes one to three) | ${kubectl_cost} s |"
  } | tee -a "$results/summary.md"
}

install_tools
start_env
needs_contexts && prepare_contexts
{
  echo "# benches/run.sh $run_id, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); crane $crane_version; $(skopeo --version); $(umoci --version)"
} | tee "$results/summary.md"
needs_contexts && push_base
has_section push && section_push
has_section warm && section_warm
has_section controller && section_controller
has_section profile && section_profile
has_section platforms && section_platforms
has_section checks && section_checks
has_section rollout && section_rollout
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$results/summary.md"
