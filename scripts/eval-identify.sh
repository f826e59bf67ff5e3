#!/usr/bin/env bash
# LFW identification, closed and open set: facekit vs face_recognition (dlib), same protocol,
# same script (issue 12, acceptance 1).
#
#   bash scripts/eval-identify.sh [THREADS]        (default 2; SHARED=DIR for another ../shared)
#
# Protocol and figures: see examples/eval_identify.rs (gallery = first photo of each of the
# 1,680 people with >= 2 photos, genuine probes = their other photos, impostors = the 4,069
# single-photo people; rank-1, DIR at FAR 1 % and 0.1 %, the calibrated identify threshold).
# facekit's embeddings go through its embedding cache; face_recognition's encodings of all
# 13,233 photos are computed once by scripts/eval_identify_peer.py in the throwaway venv of
# scripts/peer_dlib_env.sh (~10 min to build dlib the first time) and cached under
# ${FACEKIT_CACHE:-$HOME/.cache/facekit}/peer-lfw-identify (2 processes, ~7 min the first time).
# Without the venv the face_recognition column is skipped with a note. Prints only the table.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
shared="${SHARED:-../shared}"
root="$shared/data/lfw/lfw-deepfunneled"
if [ ! -d "$root" ]; then
    echo "SKIPPED: $root not found (the evaluation needs LFW deep-funneled in ../shared/data/lfw)" >&2
    exit 0
fi
cache="${FACEKIT_CACHE:-$HOME/.cache/facekit}"
log="${TMPDIR:-/tmp}/facekit-eval-identify.log"
: > "$log"

cargo build --release --quiet --example eval_identify
peer_args=()
if py=$(bash scripts/peer_dlib_env.sh 2>>"$log" | tail -n 1) && [ -x "$py" ]; then
    npz="$shared/golden/lfw_face_recognition.npz"
    npz_args=()
    [ -f "$npz" ] && npz_args=(--npz "$npz")
    if "$py" scripts/eval_identify_peer.py --root "$root" --out "$cache/peer-lfw-identify" \
        --workers "$threads" "${npz_args[@]}" 2>>"$log"; then
        peer_args=(--peer "$cache/peer-lfw-identify")
    else
        echo "NOTE: face_recognition column skipped: its encodings failed (see $log)" >&2
    fi
else
    echo "NOTE: face_recognition column skipped: could not set up the dlib venv (see $log)" >&2
fi
target/release/examples/eval_identify --shared "$shared" --threads "$threads" "${peer_args[@]}"
