#!/usr/bin/env bash
# Embedding and verify speed: facekit vs face_recognition (dlib), same chips/photos, same run.
#
#   bash scripts/bench-embed.sh [THREADS] [REPEAT]      (defaults: 2 threads, 3 repeats)
#
# Rows: median ms per face for the ResNet alone (dlib's own 79 aligned chips from
# ../shared/golden/dlib_chips, batch 1 and batch 16), and the median wall time of one whole
# `facekit verify A B` process on ~0.5 MP photos (startup, model load, detection, alignment,
# both embeddings)
# against face_recognition's in-process verify plus its interpreter startup. The dlib column
# needs a throwaway venv that builds dlib from source (scripts/peer_dlib_env.sh, ~9 min the
# first time); it is skipped with a message when that cannot be set up.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
repeat="${2:-3}"
shared="${SHARED:-../shared}"
if [ ! -d "$shared/golden/dlib_chips" ]; then
    echo "SKIPPED: $shared/golden/dlib_chips not found (the benchmark uses ../shared)" >&2
    exit 0
fi
chips=("$shared"/golden/dlib_chips/*.png)
cargo build --release --quiet --example bench_embed --example camera_photos --bin facekit
# verify's photos: facenet-pytorch's four test photos resized to ~0.5 MP (JPEG q92), compared as
# two pairs (kate_siegel vs paul_rudd, angelina_jolie vs shea_whigham).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/examples/camera_photos "$work" --from "$shared/data/facenet-pytorch/test_images" \
    --count 4 --megapixels 0.5 >/dev/null
a="$work/kate_siegel_1.jpg"
b="$work/paul_rudd_1.jpg"
c="$work/angelina_jolie_1.jpg"
d="$work/shea_whigham_1.jpg"
peer=""
if py=$(bash scripts/peer_dlib_env.sh 2>/tmp/facekit-peer-dlib-env.log | tail -n 1) && [ -x "$py" ]; then
    peer="$py"
else
    echo "NOTE: face_recognition column skipped: could not set up the dlib venv (see /tmp/facekit-peer-dlib-env.log)" >&2
fi

field() { python3 -c "import json,sys; v=json.load(sys.stdin).get('$1'); print('%.1f' % v if v is not None else '-')"; }
ours=$(target/release/examples/bench_embed --threads "$threads" --repeat "$repeat" "${chips[@]}")
fast=$(target/release/examples/bench_embed --threads "$threads" --repeat "$repeat" --precision fast "${chips[@]}")
# Whole verify process, wall time, median over repeats of two pairs.
verify_ms=$(python3 - "$threads" "$repeat" "$a" "$b" "$c" "$d" <<'PY'
import statistics, subprocess, sys, time
threads, repeat, a, b, c, d = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
times = []
for _ in range(repeat):
    for x, y in ((a, b), (c, d)):
        t = time.perf_counter()
        subprocess.run(["target/release/facekit", "verify", "--threads", threads, x, y], capture_output=True)
        times.append((time.perf_counter() - t) * 1e3)
print("%.1f" % statistics.median(times))
PY
)
if [ -n "$peer" ]; then
    theirs=$(OPENBLAS_NUM_THREADS="$threads" "$peer" scripts/bench_embed_peer.py --repeat "$repeat" \
        --images "$a" "$b" --images "$c" "$d" "${chips[@]}" 2>/dev/null)
    t1=$(echo "$theirs" | field per_face_ms_batch1)
    t16=$(echo "$theirs" | field per_face_ms_batch16)
    tv=$(echo "$theirs" | field verify_pair_ms)
    ts=$(echo "$theirs" | field process_startup_ms)
    tvp=$(python3 -c "print('%.1f' % ($tv + $ts))")
else
    t1=skipped; t16=skipped; tv=skipped; tvp=skipped
fi
o1=$(echo "$ours" | field per_face_ms_batch1)
o16=$(echo "$ours" | field per_face_ms_batch16)
f1=$(echo "$fast" | field per_face_ms_batch1)
f16=$(echo "$fast" | field per_face_ms_batch16)
ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print('%.2f' % (float(a)/float(b)))" "$1" "$2" 2>/dev/null || echo "-"; }
printf '%-44s %12s %18s %8s\n' "measure" "facekit ms" "face_recognition ms" "ratio"
printf '%-44s %12s %18s %8s\n' "ResNet per face, batch 1 (79 dlib chips)" "$o1" "$t1" "$(ratio "$o1" "$t1")"
printf '%-44s %12s %18s %8s\n' "ResNet per face, batch 16" "$o16" "$t16" "$(ratio "$o16" "$t16")"
printf '%-44s %12s %18s %8s\n' "ResNet per face, batch 1, --precision fast" "$f1" "$t1" "$(ratio "$f1" "$t1")"
printf '%-44s %12s %18s %8s\n' "ResNet per face, batch 16, --precision fast" "$f16" "$t16" "$(ratio "$f16" "$t16")"
printf '%-44s %12s %18s %8s\n' "verify A B, whole process (0.5 MP photos)" "$verify_ms" "$tvp" "$(ratio "$verify_ms" "$tvp")"
echo "(medians, $threads threads, $repeat repeats; face_recognition's verify = in-process verify + interpreter startup)"
