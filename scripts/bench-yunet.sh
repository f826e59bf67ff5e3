#!/usr/bin/env bash
# YuNet speed: facekit's port vs the yuface wheel's compiled libfacedetection (issue #11, item 5),
# same pixels, same thread count, same run.
#
#   bash scripts/bench-yunet.sh [THREADS] [REPEAT]      (defaults: 2 threads, 3 repeats; ROUNDS=3)
#
# Images: the 38 of ../shared/golden/yunet.json (20 WIDER-subset images + the 18 dlib/faces and
# facenet-pytorch photos; without the golden file, the first 20 WIDER-subset images by path and
# those photos). Rows:
#   "640 px"       the 20 WIDER images, resized once in Rust (bilinear) so the long side is 640
#   "native size"  all 38 as decoded (EXIF orientation ignored, as the golden file and the wheel)
# examples/bench_yunet.rs decodes/resizes each image once with facekit and writes it as raw BGR;
# both sides are then timed from those files (scripts/bench_yunet_peer.py loads them with numpy),
# so libfacedetection never sees another decoder's pixels. Each row alternates facekit and
# libfacedetection for $ROUNDS rounds (the machine is shared and its speed drifts); each figure is
# the median of the per-round medians (each per-round median is over all image x repeat calls).
# Threads: rayon pool of THREADS for facekit, OMP_NUM_THREADS=THREADS for the wheel.
# OpenMP wait policy: libgomp's default (threads spin between parallel regions) is fastest on an
# idle machine but collapses when the cores are oversubscribed (measured here at load ~7 on 2
# cores: 640 px went from ~80 to ~440 ms per image). So every round times the wheel twice, with
# OMP_WAIT_POLICY unset and =passive, and the libfacedetection column is the faster of the two
# (both are printed to stderr): the ratio is against the reference's best case.
#
# The peer runs in a throwaway venv (benchmark only; nothing in facekit uses it):
#   ${FACEKIT_CACHE:-$HOME/.cache/facekit}/peer-yunet-venv  with yuface==2023.5.1 (cp311 wheel,
#   sha256 checked) and numpy==1.26.4. FACEKIT_PEER_PYTHON picks the interpreter (must be 3.11),
#   FACEKIT_PEER_FORCE=1 rebuilds it. Without it the libfacedetection column is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
repeat="${2:-3}"
rounds="${ROUNDS:-3}"
shared="${SHARED:-../shared}"
if [ ! -d "$shared/data" ]; then
    echo "SKIPPED: $shared/data not found (the benchmark uses ../shared's photos)" >&2
    exit 0
fi

# ---- the throwaway peer venv -------------------------------------------------------------------
YUFACE_WHL_SHA256=fd03270a672da75b89809a2c999d5728ef19c6e701408a4d0bc9c00480c864a0
PEER_PKGS=(yuface==2023.5.1 numpy==1.26.4)
peer_env() {
    local cache="${FACEKIT_CACHE:-$HOME/.cache/facekit}"
    local venv="$cache/peer-yunet-venv" base="${FACEKIT_PEER_PYTHON:-python3}"
    local vpy="$venv/bin/python" marker="$venv/.facekit-peer-yunet-env"
    local spec="v1 ${PEER_PKGS[*]}"
    verify() {
        "$vpy" - <<'EOF'
import importlib.metadata as md, numpy as np, yuface
want = {"yuface": "2023.5.1", "numpy": "1.26.4"}
got = {k: md.version(k) for k in want}
assert got == want, f"version mismatch: {got} != {want}"
confs, boxes, lms = yuface.detect(np.zeros((48, 64, 3), np.uint8))
assert len(confs) == 0
print("ok", got)
EOF
    }
    if [[ "${FACEKIT_PEER_FORCE:-0}" != 1 && -x "$vpy" && -f "$marker" ]] \
       && [[ "$(cat "$marker")" == "$spec" ]] && verify >&2 2>&1; then
        echo "$vpy"; return 0
    fi
    "$base" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || { echo "peer: $base is not Python 3.11 (yuface 2023.5.1 has only a cp311 wheel); set FACEKIT_PEER_PYTHON" >&2; return 1; }
    echo "peer: creating $venv" >&2
    rm -rf "$venv"; mkdir -p "$cache"
    "$base" -m venv "$venv" >&2
    local dl="$venv/wheels"; mkdir -p "$dl"
    "$vpy" -m pip download --disable-pip-version-check --no-input --no-deps --only-binary=:all: \
        --progress-bar off -d "$dl" yuface==2023.5.1 >&2
    echo "$YUFACE_WHL_SHA256  $(ls "$dl"/yuface-2023.5.1-*.whl)" | sha256sum -c - >&2
    "$vpy" -m pip install --disable-pip-version-check --no-input --no-cache-dir --only-binary=:all: \
        --progress-bar off "$dl"/yuface-2023.5.1-*.whl numpy==1.26.4 >&2
    verify >&2
    echo "$spec" > "$marker"
    echo "$vpy"
}
peer=""
if py=$(peer_env 2>/tmp/facekit-peer-yunet-env.log | tail -n 1) && [ -x "$py" ]; then
    peer="$py"
else
    echo "NOTE: libfacedetection column skipped: could not set up the peer venv (see /tmp/facekit-peer-yunet-env.log)" >&2
fi

# ---- images ------------------------------------------------------------------------------------
golden="$shared/golden/yunet.json"
mapfile -t wider < <(python3 - "$shared" "$golden" <<'EOF'
import glob, json, os, sys
shared, golden = sys.argv[1:]
if os.path.exists(golden):
    paths = [im["path"] for im in json.load(open(golden))["images"] if "widerface" in im["path"]]
    print("\n".join(os.path.join(shared, p) for p in paths))
else:
    print("\n".join(sorted(glob.glob(os.path.join(shared, "data/widerface-val-subset/images/*/*.jpg")))[:20]))
EOF
)
mapfile -t photos < <(python3 - "$shared" "$golden" <<'EOF'
import glob, json, os, sys
shared, golden = sys.argv[1:]
if os.path.exists(golden):
    paths = [im["path"] for im in json.load(open(golden))["images"] if "widerface" not in im["path"]]
    print("\n".join(os.path.join(shared, p) for p in paths))
else:
    d = os.path.join(shared, "data")
    print("\n".join(sorted(glob.glob(f"{d}/dlib/faces/*.jpg")) + sorted(glob.glob(f"{d}/facenet-pytorch/*.jpg"))
                    + sorted(glob.glob(f"{d}/facenet-pytorch/test_images*/*/1.*"))))
EOF
)

cargo build --release --quiet --example bench_yunet
ours=target/release/examples/bench_yunet
work="$(mktemp -d "${TMPDIR:-/tmp}/facekit-bench-yunet.XXXXXX")"
trap 'rm -rf "$work"' EXIT
"$ours" --size 640 --write-bgr "$work/640" "${wider[@]}" 2>/dev/null
"$ours" --size native --write-bgr "$work/native" "${wider[@]}" "${photos[@]}" 2>/dev/null
if [ -f "$golden" ]; then
    # facekit's decoder vs the golden file's decoded pixels (OpenCV/libjpeg-turbo).
    python3 - "$work/native" "$golden" "$shared" <<'EOF' >&2
import hashlib, json, os, sys
d, golden, shared = sys.argv[1:]
want = {os.path.normpath(os.path.join(shared, im["path"])): im["bgr_sha256"]
        for im in json.load(open(golden))["images"]}
ok = n = 0
for line in open(os.path.join(d, "manifest.tsv")):
    f, _, _, src = line.rstrip("\n").split("\t")
    if os.path.normpath(src) in want:
        n += 1
        ok += hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest() == want[os.path.normpath(src)]
print(f"sanity: native BGR bytes identical to the golden file's decode: {ok}/{n}")
EOF
fi

json_get() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
median() { python3 -c 'import statistics,sys; print("%.1f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
# Per-image face counts (yuface.detect's default: score_pct > 50) from both sides' first round.
sanity() {
    python3 - "$1" "$2" "$3" <<'EOF'
import json, sys
name, a, b = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
fa = {p["file"]: p["faces"] for p in a["per_image"]}
fb = {p["file"]: p["faces"] for p in b["per_image"]}
same = sum(fa[k] == fb.get(k) for k in fa)
diff = ", ".join(f"{k}: {fa[k]} vs {fb.get(k)}" for k in fa if fa[k] != fb.get(k))
print(f"sanity ({name}): faces at score_pct > 50: facekit {sum(fa.values())}, "
      f"libfacedetection {sum(fb.values())}; same count on {same}/{len(fa)} images"
      + (f" (differ: {diff})" if diff else ""))
EOF
}

sanity_lines=()
table=()
row() {
    local name="$1" dir="$2"
    local ours_ms=() peer_ms=() passive_ms=() a b b1 b2 ratio count r
    count=$(grep -c . "$dir/manifest.tsv")
    for r in $(seq "$rounds"); do
        "$ours" --threads "$threads" --repeat "$repeat" --bgr-dir "$dir" > "$work/ours.json"
        ours_ms+=("$(json_get median_ms < "$work/ours.json")")
        if [ -n "$peer" ]; then
            OMP_NUM_THREADS="$threads" "$peer" scripts/bench_yunet_peer.py --repeat "$repeat" "$dir" \
                2>/dev/null > "$work/peer.json"
            peer_ms+=("$(json_get median_ms < "$work/peer.json")")
            OMP_NUM_THREADS="$threads" OMP_WAIT_POLICY=passive "$peer" scripts/bench_yunet_peer.py \
                --repeat "$repeat" "$dir" 2>/dev/null > "$work/peer_passive.json"
            passive_ms+=("$(json_get median_ms < "$work/peer_passive.json")")
            if [ "$r" = 1 ]; then
                sanity_lines+=("$(sanity "$name" "$work/ours.json" "$work/peer.json")")
            fi
        fi
    done
    a=$(median "${ours_ms[@]}")
    if [ -n "$peer" ]; then
        b1=$(median "${peer_ms[@]}")
        b2=$(median "${passive_ms[@]}")
        b=$(python3 -c "print(min(float('$b1'), float('$b2')))")
        ratio=$(python3 -c "print('%.2f' % ($a / $b))")
    else
        b="skipped"; ratio="-"
    fi
    echo "rounds ($name): facekit ${ours_ms[*]} | libfacedetection ${peer_ms[*]:-skipped}" \
         "| libfacedetection OMP_WAIT_POLICY=passive ${passive_ms[*]:-skipped}" >&2
    table+=("$(printf '%-14s %7s %12s %20s %8s' "$name" "$count" "$a" "$b" "$ratio")")
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
row "640 px" "$work/640"
row "native size" "$work/native"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

printf '%-14s %7s %12s %20s %8s\n' "images" "count" "facekit ms" "libfacedetection ms" "ratio"
printf '%s\n' "${table[@]}"
echo "(median ms per image: $repeat runs per image per round, $rounds alternating rounds, $threads threads" \
     "(rayon / OMP_NUM_THREADS); libfacedetection = yuface 2023.5.1, the faster of OMP_WAIT_POLICY default/passive;" \
     "ratio = facekit / libfacedetection; same BGR pixels both sides)"
if [ ${#sanity_lines[@]} -gt 0 ]; then printf '%s\n' "${sanity_lines[@]}"; fi
