#!/usr/bin/env bash
# Builder benchmark: our layer writer against `tar | gzip -6` and `tar | pigz -6` on the same
# ~500 MB mixed context (many small source-like files, large logs and tables, incompressible
# media), generated deterministically into target/bench/context and reused when present.
#
#   benches/builder.sh            # table on stdout
#   BENCH_LEVELS="4 6" benches/builder.sh   # our gzip levels to measure (default: 4 5 6)
#   BENCH_RUNS=3 benches/builder.sh         # runs per tool, the fastest is kept (default 1)
#   BENCH_CONTEXT=~/.cargo/registry/src benches/builder.sh   # any directory instead, e.g. real
#                                           # source code (not generated, not changed)
#
# Needs gzip, pigz and /usr/bin/time (apt-get install -y pigz time). The machine is shared:
# every tool runs in the same invocation, after a warm-up read, so the ratios between rows
# are what to compare.
set -euo pipefail
cd "$(dirname "$0")/.."

bench_dir=target/bench
context=${BENCH_CONTEXT:-$bench_dir/context}
out=$bench_dir/out
levels=${BENCH_LEVELS:-"4 5 6"}
runs=${BENCH_RUNS:-1}

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "benches/builder.sh: $1 is missing; install it with: apt-get install -y $2" >&2
    exit 1
  }
}
need gzip gzip
need pigz pigz
[ -x /usr/bin/time ] || need /usr/bin/time time

echo "building the benchmark binary..." >&2
# The bench's own artifact: cargo also lists the imagebuild binary it builds alongside.
binary=$(cargo bench --bench build_layer --no-run --message-format=json 2>/dev/null \
  | grep '"name":"build_layer"' | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$binary" ] || { echo "benches/builder.sh: cannot find the build_layer binary" >&2; exit 1; }

if [ -z "${BENCH_CONTEXT:-}" ]; then
  echo "generating the context in $context (reused when present)..." >&2
  "$binary" --generate "$context"
fi
mkdir -p "$out"

# Warm the page cache and measure the input: every row reads the same cached files.
input_bytes=$(tar -c --sort=name -C "$context" . | wc -c)
files=$(find "$context" -type f | wc -l)

rows=()
# measure LABEL OUTPUT_FILE_OR_- COMMAND...: runs COMMAND $runs times and appends
# "label;fastest wall;largest RSS;bytes;cpu seconds of the fastest run" to rows.
measure() {
  local label=$1 output=$2
  shift 2
  local best="" best_cpu="" rss_max=0 bytes="" run
  for ((run = 0; run < runs; run++)); do
    local timing stdout start end wall rss cpu
    timing=$(mktemp)
    stdout=$(mktemp)
    start=$(date +%s.%N)
    /usr/bin/time -v -o "$timing" "$@" >"$stdout"
    end=$(date +%s.%N)
    if [ "$output" = - ]; then
      bytes=$(sed -n 's/^compressed_bytes=//p' "$stdout")
    else
      bytes=$(stat -c %s "$output")
      rm -f "$output"
    fi
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$timing")
    cpu=$(awk -F': ' '/User time|System time/ { t += $2 } END { printf "%.2f", t }' "$timing")
    wall=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }')
    if [ -z "$best" ] || awk -v a="$best" -v b="$wall" 'BEGIN { exit !(b < a) }'; then
      best=$wall
      best_cpu=$cpu
    fi
    rss_max=$((rss > rss_max ? rss : rss_max))
    rm -f "$timing" "$stdout"
  done
  rows+=("$label;$best;$rss_max;$bytes;$best_cpu")
}

echo "measuring (load before: $(cut -d' ' -f1-3 /proc/loadavg))..." >&2
measure "tar | gzip -6" "$out/gzip.tar.gz" \
  bash -c "tar -c --sort=name -C '$context' . | gzip -6 > '$out/gzip.tar.gz'"
measure "tar | pigz -6 -p 2" "$out/pigz.tar.gz" \
  bash -c "tar -c --sort=name -C '$context' . | pigz -6 -p 2 > '$out/pigz.tar.gz'"
for level in $levels; do
  measure "imagebuild gzip $level" - "$binary" "$context" --out "$out" --level "$level"
done
measure "imagebuild zstd 3" - "$binary" "$context" --out "$out" --zstd 3

gzip_bytes=$(echo "${rows[0]}" | cut -d';' -f4)
pigz_wall=$(echo "${rows[1]}" | cut -d';' -f2)

echo
echo "context: $files files, $((input_bytes / 1000000)) MB as tar; 2 cores; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-22s %8s %8s %8s %14s %10s %10s %9s\n' \
  tool "wall s" "MB/s" "cpu s" "compressed" "vs gzip-6" "peak RSS" "vs pigz"
for row in "${rows[@]}"; do
  IFS=';' read -r label wall rss bytes cpu <<<"$row"
  awk -v l="$label" -v w="$wall" -v r="$rss" -v b="$bytes" -v c="$cpu" -v input="$input_bytes" \
      -v g="$gzip_bytes" -v p="$pigz_wall" 'BEGIN {
    printf "%-22s %8.2f %8.1f %8.2f %14d %+9.2f%% %7.1f MB %8.2fx\n",
      l, w, input / w / 1e6, c, b, (b / g - 1) * 100, r / 1024, p / w
  }'
done
echo "(MB/s counts uncompressed tar bytes; cpu s is user+sys, steadier than wall on a busy"
echo " machine; the peak RSS of a pipeline is that of its largest process)"
