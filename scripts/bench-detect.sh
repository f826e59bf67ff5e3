#!/usr/bin/env bash
# Detection speed: facekit vs facenet-pytorch's MTCNN, same images, same thread count, same run.
#
#   bash scripts/bench-detect.sh [THREADS] [REPEAT]      (defaults: 2 threads, 3 repeats; ROUNDS=3)
#
# Prints median milliseconds per image for three sets of ../shared photos: the small ones
# (<= 0.5 MP) at their own size, the large ones at their own size, and all of them resized to
# 640 px on the long side; then 60 LFW photos (250x250, every 40th of the sorted set) with
# facekit's MTCNN time per stage, on its CPU kernels and on the candle networks they replaced
# (bit-identical results; `bench_detect --stages` / `--reference`). The facenet-pytorch column needs a throwaway venv
# (scripts/peer_env.sh, CPU torch); it is skipped with a message when that cannot be set up.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
repeat="${2:-3}"
shared="${SHARED:-../shared}"
if [ ! -d "$shared/data" ]; then
    echo "SKIPPED: $shared/data not found (the benchmark uses ../shared's photos)" >&2
    exit 0
fi
small=("$shared"/data/dlib/faces/20*.jpg "$shared"/data/dlib/faces/Tom_Cruise_avp_2014_4.jpg)
large=("$shared"/data/dlib/faces/bald_guys.jpg "$shared"/data/dlib/faces/dogs.jpg
       "$shared"/data/facenet-pytorch/test_images/*/1.jpg "$shared"/data/facenet-pytorch/multiface.jpg)

cargo build --release --quiet --example bench_detect
ours=target/release/examples/bench_detect

peer=""
if py=$(bash scripts/peer_env.sh 2>/tmp/facekit-peer-env.log | tail -n 1) && [ -x "$py" ]; then
    peer="$py"
else
    echo "NOTE: facenet-pytorch column skipped: could not set up the peer venv (see /tmp/facekit-peer-env.log)" >&2
fi

median_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])'; }
median() { python3 -c 'import statistics,sys; print("%.1f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

printf '%-34s %7s %16s %18s %8s\n' "images" "count" "facekit ms" "facenet-pytorch ms" "ratio"
# Each row alternates facekit and facenet-pytorch for $rounds rounds (the machine is shared and
# its speed drifts); each tool's figure is the median of its per-round medians.
rounds="${ROUNDS:-3}"
row() {
    local name="$1" long="$2"; shift 2
    local ours_ms=() peer_ms=() a b ratio
    for _ in $(seq "$rounds"); do
        ours_ms+=("$("$ours" --threads "$threads" --repeat "$repeat" --long-side "$long" "$@" | median_of)")
        if [ -n "$peer" ]; then
            peer_ms+=("$("$peer" scripts/bench_detect_peer.py --threads "$threads" --repeat "$repeat" --long-side "$long" "$@" 2>/dev/null | median_of)")
        fi
    done
    a=$(median "${ours_ms[@]}")
    if [ -n "$peer" ]; then
        b=$(median "${peer_ms[@]}")
        ratio=$(python3 -c "print('%.2f' % ($a / $b))")
    else
        b="skipped"; ratio="-"
    fi
    printf '%-34s %7s %16s %18s %8s\n' "$name" "$#" "$a" "$b" "$ratio"
}
row "<= 0.5 MP, own size" 0 "${small[@]}"
row "1-4 MP, own size" 0 "${large[@]}"
row "all, 640 px long side" 640 "${small[@]}" "${large[@]}"
lfw=()
if [ -d "$shared/data/lfw/lfw-deepfunneled" ]; then
    mapfile -t lfw < <(find "$shared/data/lfw/lfw-deepfunneled" -name '*.jpg' | sort | awk 'NR % 40 == 1' | head -n 60)
    row "LFW 250x250" 0 "${lfw[@]}"
fi
echo "(median ms per image: $repeat runs per image per round, $rounds alternating rounds, $threads threads; ratio = facekit / facenet-pytorch)"

if [ "${#lfw[@]}" -gt 0 ]; then
    echo
    printf '%-24s %9s %9s %9s %9s %12s\n' "MTCNN stages, LFW" "P-Net ms" "R-Net ms" "O-Net ms" "total ms" "candidates"
    stages() {
        local label="$1"; shift
        local runs=()
        for _ in $(seq "$rounds"); do
            runs+=("$("$ours" --threads "$threads" --repeat "$repeat" "$@" "${lfw[@]}")")
        done
        printf '%s\n' "${runs[@]}" | python3 -c '
import json, statistics, sys
label = sys.argv[1]
runs = [json.loads(line)["stages"] for line in sys.stdin if line.strip()]
med = lambda k: statistics.median(r[k] for r in runs)
p, r, o = med("pnet_ms"), med("rnet_ms"), med("onet_ms")
cands = "%.1f/%.1f" % (runs[0]["rnet_candidates"], runs[0]["onet_candidates"])
print("%-24s %9.2f %9.2f %9.2f %9.2f %12s" % (label, p, r, o, p + r + o, cands))' "$label"
    }
    stages "cpu kernels" --stages
    stages "candle networks" --reference
    echo "(mean over images of each image's median; medians of $rounds rounds; candidates = R-Net/O-Net inputs per image)"
fi
