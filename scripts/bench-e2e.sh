#!/usr/bin/env bash
# End to end: `facekit embed` vs face_recognition on the same photos, same run.
#
#   bash scripts/bench-e2e.sh [THREADS] [ROUNDS] [COUNT]    (defaults: 2 threads, 3 rounds, 400)
#   bash scripts/bench-e2e.sh --camera [THREADS] [ROUNDS] [COUNT]   (default COUNT 20)
#
# LFW (default): the first COUNT distinct images named by ../shared/data/lfw/pairs.txt, from
# lfw-deepfunneled. --camera: camera-photo stand-ins, COUNT/2 WIDER val images upscaled to
# ~12 MP and the next COUNT/2 to ~24 MP (examples/camera_photos.rs, JPEG q92); the peer then
# runs CLI-style: like face_recognition's own `face_recognition` command, it shrinks photos
# over 1600 px to fit 1600x1600 before detecting (facekit detects on a reduced copy too, see
# README "Camera photos", but cuts the chips from the full-resolution image). facekit: one `facekit embed --no-cache --threads THREADS` process over all of
# them (default settings otherwise: MTCNN, flip on, JSON Lines to a file). face_recognition: one
# Python process with a pool of THREADS worker processes (scripts/bench_e2e_peer.py: HOG
# upsample 1, 5-point landmarks, dlib ResNet, every face). Both are timed as whole processes
# (start, model load, decode, detect, align, embed) with GNU time, alternating, ROUNDS rounds;
# the table shows the median wall time, images/s, the median CPU time (user + sys, all
# processes; less sensitive than wall time to other jobs on the machine), faces found and the
# peak RSS (for the peer: the largest single process, as GNU time reports the maximum over the
# process tree's members).
# FACEKIT_FLAGS adds flags to the facekit command (e.g. FACEKIT_FLAGS="--precision fast"); the
# table's footer names them.
# The face_recognition column needs the dlib venv (scripts/peer_dlib_env.sh, ~9 min the first
# time); it is skipped with a message when that cannot be set up.
set -euo pipefail
cd "$(dirname "$0")/.."
camera=""
if [ "${1:-}" = --camera ]; then camera=1; shift; fi
threads="${1:-2}"
rounds="${2:-3}"
count="${3:-$([ -n "$camera" ] && echo 20 || echo 400)}"
shared="${SHARED:-../shared}"
lfw="$shared/data/lfw"
[ -f "$lfw/pairs.txt" ] || { echo "SKIPPED: $lfw/pairs.txt not found (the benchmark uses ../shared)" >&2; exit 0; }
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 2; }

cargo build --release --quiet --bin facekit --example camera_photos
BIN="$PWD/target/release/facekit"
peer=""
if py=$(bash scripts/peer_dlib_env.sh 2>/tmp/facekit-peer-dlib-env.log | tail -n 1) && [ -x "$py" ]; then
    peer="$py"
else
    echo "NOTE: face_recognition column skipped: could not set up the dlib venv (see /tmp/facekit-peer-dlib-env.log)" >&2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
peer_flags=()
if [ -n "$camera" ]; then
    half=$((count / 2))
    target/release/examples/camera_photos "$WORK/photos" --count "$half" --megapixels 12 | cut -f1 > "$WORK/list"
    target/release/examples/camera_photos "$WORK/photos" --count $((count - half)) --skip "$half" \
        --megapixels 24 | cut -f1 >> "$WORK/list"
    peer_flags=(--cli-style)
else
# The first COUNT distinct images of pairs.txt, in order of first appearance.
python3 - "$lfw" "$count" > "$WORK/list" <<'PY'
import sys
lfw, count = sys.argv[1], int(sys.argv[2])
seen, out = set(), []
with open(f"{lfw}/pairs.txt") as f:
    next(f)
    for line in f:
        p = line.split()
        if len(p) == 3:
            imgs = [(p[0], int(p[1])), (p[0], int(p[2]))]
        elif len(p) == 4:
            imgs = [(p[0], int(p[1])), (p[2], int(p[3]))]
        else:
            continue
        for name, i in imgs:
            path = f"{lfw}/lfw-deepfunneled/{name}/{name}_{i:04d}.jpg"
            if path not in seen:
                seen.add(path)
                out.append(path)
        if len(out) >= count:
            break
print("\n".join(out[:count]))
PY
fi
n=$(wc -l < "$WORK/list")
mapfile -t photos < "$WORK/list"
# Warm the page cache so neither side pays for the first read of the photos.
cat "${photos[@]}" > /dev/null

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
: > "$WORK/ft"; : > "$WORK/fm"; : > "$WORK/fc"; : > "$WORK/pt"; : > "$WORK/pm"; : > "$WORK/pc"
ffaces=-; pfaces=-
for round in $(seq "$rounds"); do
    /usr/bin/time -f '%e %M %U %S' -o "$WORK/time" \
        "$BIN" embed --quiet --no-cache --threads "$threads" ${FACEKIT_FLAGS:-} --out "$WORK/out.jsonl" --force "${photos[@]}"
    read -r secs kb us ss < "$WORK/time"
    echo "$secs" >> "$WORK/ft"; echo "$kb" >> "$WORK/fm"; awk -v u="$us" -v s="$ss" 'BEGIN {printf "%.2f\n", u + s}' >> "$WORK/fc"
    ffaces=$(wc -l < "$WORK/out.jsonl")
    if [ -n "$peer" ]; then
        /usr/bin/time -f '%e %M %U %S' -o "$WORK/time" \
            "$peer" scripts/bench_e2e_peer.py --processes "$threads" "${peer_flags[@]}" "$WORK/list" > "$WORK/peer.json" \
            2> "$WORK/peer.err" || { cat "$WORK/peer.err" >&2; exit 1; }
        read -r secs kb us ss < "$WORK/time"
        echo "$secs" >> "$WORK/pt"; echo "$kb" >> "$WORK/pm"; awk -v u="$us" -v s="$ss" 'BEGIN {printf "%.2f\n", u + s}' >> "$WORK/pc"
        pfaces=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['faces'])" "$WORK/peer.json")
    fi
    echo "round $round: facekit $(tail -1 "$WORK/ft") s, face_recognition $(tail -1 "$WORK/pt" 2>/dev/null || echo skipped) s" >&2
done

ft=$(median < "$WORK/ft"); fm=$(sort -g "$WORK/fm" | tail -1); fc=$(median < "$WORK/fc")
printf '%-18s %8s %10s %10s %8s %12s\n' tool "median s" "images/s" "CPU s" faces "max RSS MB"
printf '%-18s %8s %10s %10s %8s %12s\n' facekit "$ft" "$(awk -v n="$n" -v t="$ft" 'BEGIN {printf "%.1f", n / t}')" \
    "$fc" "$ffaces" "$((fm / 1024))"
if [ -n "$peer" ]; then
    pt=$(median < "$WORK/pt"); pm=$(sort -g "$WORK/pm" | tail -1); pc=$(median < "$WORK/pc")
    printf '%-18s %8s %10s %10s %8s %12s\n' face_recognition "$pt" \
        "$(awk -v n="$n" -v t="$pt" 'BEGIN {printf "%.1f", n / t}')" "$pc" "$pfaces" "$((pm / 1024))"
    awk -v a="$pt" -v b="$ft" -v c="$pc" -v d="$fc" \
        'BEGIN {printf "ratio face_recognition / facekit: %.2fx (median wall), %.2fx (median CPU)\n", a / b, c / d}'
else
    echo "face_recognition   skipped"
fi
what="LFW photos"
[ -n "$camera" ] && what="camera photos (12 and 24 MP; peer CLI-style, shrunk to 1600 px)"
echo "($n $what, $threads threads / processes, $rounds alternating rounds, whole processes;"
echo " facekit embed --no-cache with ${FACEKIT_FLAGS:-default settings}; face_recognition: HOG + 5-point + ResNet)"
