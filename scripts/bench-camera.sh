#!/usr/bin/env bash
# Camera photos at bounded cost: `facekit detect` (one process per photo, 2 threads) on 5 WIDER
# images resized to ~24 MP (camera-photo stand-ins, JPEG q92) and on the same 5 at ~0.5 MP, in
# the same run, alternating, 3 rounds. Prints the median wall time and peak RSS per size and the
# ratio 24 MP / 0.5 MP, for each detector given (default: all).
#
#   bash scripts/bench-camera.sh [mtcnn|yunet ...]
#
# Needs ../shared (the WIDER subset) and GNU time (`apt-get install time`).
set -euo pipefail
cd "$(dirname "$0")/.."
DETECTORS=("$@")
[ ${#DETECTORS[@]} -gt 0 ] || DETECTORS=(mtcnn)
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 2; }
[ -d ../shared/data/widerface-val-subset ] || { echo "SKIPPED: ../shared is not beside the project" >&2; exit 0; }
cargo build --release --bin facekit --example camera_photos >&2
BIN="$PWD/target/release/facekit"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
./target/release/examples/camera_photos "$WORK/24mp" --count 5 --megapixels 24 >/dev/null
./target/release/examples/camera_photos "$WORK/0.5mp" --count 5 --megapixels 0.5 >/dev/null

# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

printf '%-10s %-8s %8s %12s %12s %8s\n' detector size photos "median s" "max RSS MB" faces
for det in "${DETECTORS[@]}"; do
    : > "$WORK/t24"; : > "$WORK/t05"; : > "$WORK/m24"; : > "$WORK/m05"; faces24=0; faces05=0
    for round in 1 2 3; do
        for size in 24mp 0.5mp; do
            for photo in "$WORK/$size"/*.jpg; do
                /usr/bin/time -f '%e %M' -o "$WORK/time" \
                    "$BIN" detect --json --threads 2 --detector "$det" "$photo" > "$WORK/out"
                read -r secs kb < "$WORK/time"
                n=$( (grep -o '"score"' "$WORK/out" || true) | wc -l)
                if [ "$size" = 24mp ]; then
                    echo "$secs" >> "$WORK/t24"; echo "$kb" >> "$WORK/m24"
                    [ "$round" = 1 ] && faces24=$((faces24 + n))
                else
                    echo "$secs" >> "$WORK/t05"; echo "$kb" >> "$WORK/m05"
                    [ "$round" = 1 ] && faces05=$((faces05 + n))
                fi
            done
        done
    done
    t24=$(median < "$WORK/t24"); t05=$(median < "$WORK/t05")
    m24=$(sort -g "$WORK/m24" | tail -1); m05=$(sort -g "$WORK/m05" | tail -1)
    printf '%-10s %-8s %8s %12s %12s %8s\n' "$det" "24 MP" 5 "$t24" "$((m24 / 1024))" "$faces24"
    printf '%-10s %-8s %8s %12s %12s %8s\n' "$det" "0.5 MP" 5 "$t05" "$((m05 / 1024))" "$faces05"
    awk -v a="$t24" -v b="$t05" -v d="$det" 'BEGIN {printf "%-10s ratio 24 MP / 0.5 MP (median wall): %.2f\n", d, a / b}'
done
echo "(one facekit detect process per photo, 2 threads, 3 alternating rounds; wall time includes"
echo " process start, weight loading and JPEG decoding)"
