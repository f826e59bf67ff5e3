#!/usr/bin/env bash
# Cross-check models/dlib_resnet.safetensors against face-api.js's uint8-quantised copy of the
# same dlib ResNet (npm @vladmandic/face-api@1.7.15, MIT).
#
#   * `npm pack`s the pinned package into the git-ignored cache ${FACEKIT_CACHE:-$HOME/.cache/facekit}
#     unless it is already there, and checks the tarball's sha256;
#   * extracts model/face_recognition_model-weights_manifest.json and face_recognition_model.bin
#     into the cache and checks their sha256;
#   * runs scripts/crosscheck_faceapi.py (Python standard library only), which prints a
#     per-tensor error table and a final PASS/FAIL line, and exits 1 on FAIL.
#
# Usage: scripts/crosscheck_faceapi.sh [WEIGHTS]   (default models/dlib_resnet.safetensors)
# Needs: npm, tar, sha256sum, python3.
set -euo pipefail

log() { printf 'crosscheck_faceapi: %s\n' "$*" >&2; }
die() { printf 'crosscheck_faceapi: ERROR: %s\n' "$*" >&2; exit 1; }

PACKAGE="@vladmandic/face-api@1.7.15"
TGZ="vladmandic-face-api-1.7.15.tgz"
TGZ_SHA256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"
MANIFEST="face_recognition_model-weights_manifest.json"
MANIFEST_SHA256="cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b"
BIN="face_recognition_model.bin"
BIN_SHA256="b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIGHTS="${1:-$ROOT/models/dlib_resnet.safetensors}"
CACHE="${FACEKIT_CACHE:-$HOME/.cache/facekit}"
DIR="$CACHE/face-api-1.7.15"
mkdir -p "$CACHE" "$DIR"
[[ -f "$WEIGHTS" ]] || die "$WEIGHTS not found (run scripts/convert_dlib.sh first)"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [[ ! -f "$CACHE/$TGZ" ]]; then
  log "npm pack $PACKAGE into $CACHE"
  (cd "$CACHE" && npm pack --silent "$PACKAGE" >/dev/null)
fi
[[ -f "$CACHE/$TGZ" ]] || die "npm pack did not produce $CACHE/$TGZ"
got="$(sha "$CACHE/$TGZ")"
[[ "$got" == "$TGZ_SHA256" ]] || die "$TGZ: sha256 $got != pinned $TGZ_SHA256"

extract() { # NAME PINNED_SHA256
  local f="$DIR/$1"
  if [[ ! -f "$f" || "$(sha "$f")" != "$2" ]]; then
    log "extracting $1"
    tar -xzf "$CACHE/$TGZ" -O "package/model/$1" > "$f.tmp"
    mv "$f.tmp" "$f"
  fi
  local got
  got="$(sha "$f")"
  [[ "$got" == "$2" ]] || die "$1: sha256 $got != pinned $2"
}
extract "$MANIFEST" "$MANIFEST_SHA256"
extract "$BIN" "$BIN_SHA256"

start=$SECONDS
python3 "$ROOT/scripts/crosscheck_faceapi.py" --manifest "$DIR/$MANIFEST" --bin "$DIR/$BIN" --weights "$WEIGHTS"
log "cross-check took $((SECONDS - start)) s"
