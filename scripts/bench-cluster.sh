#!/usr/bin/env bash
# Clustering at scale: 100,000 synthetic dlib-like embeddings (examples/bench_cluster.rs),
# each algorithm in its own process so the peak memory is per algorithm.
#
#   bash scripts/bench-cluster.sh [N] [SEED]        (defaults: 100000, 0)
#   PHASES=1 bash scripts/bench-cluster.sh          (also time the pieces: radius search, passes)
#
# Goal on the 2-core machine: <= 60 s and <= 2 GB per algorithm. "time s" is the wall time of
# the clustering call alone; "cpu s" its CPU time over all threads (other work on a shared
# machine inflates the wall time, much less the CPU time; free cores => wall ~= cpu / cores);
# "load" the 1-minute load average when it started. Peak MB is the process's VmHWM.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
seed="${2:-0}"
extra=()
if [ -n "${PHASES:-}" ]; then
    extra+=(--phases)
fi

cargo build --release --quiet --example bench_cluster
bin=target/release/examples/bench_cluster
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT

rows=()
for algorithm in chinese-whispers dbscan kmeans; do
    echo "== $algorithm (n $n, seed $seed)" >&2
    "$bin" --algorithm "$algorithm" --n "$n" --seed "$seed" "${extra[@]}" | tee "$log/$algorithm.txt" >&2
    rows+=("$(grep '^RESULT ' "$log/$algorithm.txt")")
done

echo
printf '%-18s %8s %8s %6s %8s %9s %10s  %s\n' algorithm "time s" "cpu s" load "peak MB" clusters "BCubed F1" "goal (<= 60 s, <= 2048 MB)"
for row in "${rows[@]}"; do
    # RESULT key=value ...
    declare -A r=()
    for kv in ${row#RESULT }; do
        r[${kv%%=*}]="${kv#*=}"
    done
    ok=$(awk -v s="${r[seconds]}" -v m="${r[peak_mb]}" 'BEGIN { print (s <= 60 && m <= 2048) ? "met" : "MISSED" }')
    printf '%-18s %8s %8s %6s %8s %9s %10s  %s\n' "${r[algorithm]}" "${r[seconds]}" "${r[cpu_seconds]}" \
        "${r[load]}" "${r[peak_mb]}" "${r[clusters]}/${r[groups]}" "${r[bcubed_f1]}" "$ok"
    unset r
done
echo "(n $n, seed $seed, $(nproc) cores; clusters = found / true groups)"
