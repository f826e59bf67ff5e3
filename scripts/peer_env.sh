#!/usr/bin/env bash
# Create (idempotently) a throwaway CPU-only venv with facenet-pytorch's MTCNN,
# the peer that scripts/bench_detect_peer.py benchmarks against.
#
#   venv:   ${FACEKIT_CACHE:-$HOME/.cache/facekit}/peer-venv
#   stdout: the venv's python path, on the last line (everything else -> stderr)
#
# Reference environment: facenet-pytorch 2.6.0, torch 2.2.2, torchvision 0.17.2,
# numpy 1.26.4, Pillow 10.2.0.
#
# Only pypi.org is reachable, and PyPI's Linux x86_64 torch 2.2.2 wheel is the
# CUDA 12.1 build: its declared deps (nvidia-*-cu12 + triton) are ~2.5 GB more
# to download. The CPU kernels all live in libtorch_cpu.so, so by default we
# install torch/torchvision/facenet-pytorch with --no-deps plus their pure
# Python deps (pinned), and satisfy the CUDA sonames that libtorch_cuda.so &co
# are linked against (libcudart.so.12, libcublas.so.12, libcudnn.so.8, ...)
# with tiny stub libraries built here with cc: every stub function returns an
# error code (cudaErrorNoDevice for the runtime), so torch reports "no CUDA
# device" and runs on CPU exactly as on a GPU-less machine. Needs cc and nm.
#
# Environment:
#   FACEKIT_CACHE           cache root (default $HOME/.cache/facekit)
#   FACEKIT_PEER_PYTHON     interpreter for the venv (default python3; 3.9-3.12)
#   FACEKIT_PEER_REAL_CUDA  1 = install torch's real nvidia-*-cu12/triton deps
#                           instead of stubs (+2.0 GB download, +3.3 GB on
#                           disk); automatic when cc or nm is missing.
#   FACEKIT_PEER_FORCE      1 = delete and rebuild the venv.
set -euo pipefail

log() { printf 'peer_env: %s\n' "$*" >&2; }
die() { printf 'peer_env: ERROR: %s\n' "$*" >&2; exit 1; }

CACHE="${FACEKIT_CACHE:-$HOME/.cache/facekit}"
VENV="$CACHE/peer-venv"
VPY="$VENV/bin/python"
BASE_PY="${FACEKIT_PEER_PYTHON:-python3}"
MARKER="$VENV/.facekit-peer-env"

# Pinned so the venv is reproducible; the pure-Python deps are versions
# contemporary with torch 2.2.2 (sympy<1.13 in particular).
PEER_PKGS=(
  torch==2.2.2 torchvision==0.17.2 facenet-pytorch==2.6.0
  numpy==1.26.4 Pillow==10.2.0
  filelock==3.13.3 typing-extensions==4.10.0 sympy==1.12 mpmath==1.3.0
  networkx==3.2.1 Jinja2==3.1.3 MarkupSafe==2.1.5 fsspec==2024.3.1
  requests==2.31.0 charset-normalizer==3.3.2 idna==3.6 urllib3==2.2.1
  certifi==2024.2.2 tqdm==4.66.2
)

mode=stub
if [[ "${FACEKIT_PEER_REAL_CUDA:-0}" == 1 ]]; then
  mode=real
elif ! command -v cc >/dev/null 2>&1 || ! command -v nm >/dev/null 2>&1; then
  log "cc or nm not found: falling back to torch's real CUDA deps (~2.7 GB download, ~5 GB on disk)"
  mode=real
fi
SPEC="v1 mode=$mode ${PEER_PKGS[*]}"

verify() {
  "$VPY" - <<'EOF'
import importlib.metadata as md
import torch, torchvision, numpy, PIL
from facenet_pytorch import MTCNN
want = {"facenet-pytorch": "2.6.0", "torch": "2.2.2", "torchvision": "0.17.2",
        "numpy": "1.26.4", "Pillow": "10.2.0"}
got = {k: md.version(k) for k in want}
bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
assert not bad, f"version mismatch (got, want): {bad}"
assert not torch.cuda.is_available()
m = MTCNN(keep_all=True, device="cpu")
boxes, probs, pts = m.detect(PIL.Image.new("RGB", (64, 48)), landmarks=True)
assert boxes is None
print("ok", " ".join(f"{k}={v}" for k, v in got.items()))
EOF
}

if [[ "${FACEKIT_PEER_FORCE:-0}" != 1 && -x "$VPY" && -f "$MARKER" ]] \
   && [[ "$(cat "$MARKER")" == "$SPEC" ]] && verify >&2 2>&1; then
  log "reusing $VENV"
  echo "$VPY"
  exit 0
fi

command -v "$BASE_PY" >/dev/null 2>&1 || die "'$BASE_PY' not found (set FACEKIT_PEER_PYTHON)"
"$BASE_PY" - <<'EOF' || die "$BASE_PY is not Python 3.9-3.12 (torch 2.2.2 / numpy 1.26.4 have no wheels for it); set FACEKIT_PEER_PYTHON"
import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 12) else 1)
EOF

start=$SECONDS
log "creating $VENV (mode=$mode)"
rm -rf "$VENV"
mkdir -p "$CACHE"
"$BASE_PY" -m venv "$VENV" >&2 || die "python -m venv failed (on Debian: apt-get install python3-venv)"

pip_install() {
  "$VPY" -m pip install --disable-pip-version-check --no-input --no-cache-dir \
    --only-binary=:all: --progress-bar off "$@" >&2
}

if [[ $mode == real ]]; then
  # same pins; pip's resolver adds torch's nvidia-*-cu12 and triton deps
  pip_install "${PEER_PKGS[@]}" \
    || die "pip install (real CUDA deps) failed; see pip output above"
else
  pip_install --no-deps "${PEER_PKGS[@]}" \
    || die "pip install --no-deps failed; see pip output above"

  log "building CUDA stub libraries"
  TORCH_LIB="$("$VPY" -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("torch").origin), "lib"))')"
  [[ -d "$TORCH_LIB" ]] || die "torch/lib not found in venv"
  STUB_SRC="$VENV/facekit-cuda-stubs"
  mkdir -p "$STUB_SRC"
  "$VPY" - "$TORCH_LIB" "$STUB_SRC" >&2 <<'EOF' || die "generating CUDA stubs failed"
# For every CUDA soname that torch's libraries need but the wheel does not
# ship, write <soname>.c (+ .map version script) defining each symbol torch
# imports from it. Symbols are found with nm; versioned imports (sym@libX.so.N)
# map to their library, the unversioned ones by prefix.
import glob, os, re, subprocess, sys
lib, out = sys.argv[1:]
objs = glob.glob(os.path.join(lib, "*.so*")) + glob.glob(os.path.join(lib, "..", "_C*.so"))
cuda = re.compile(r"^lib(cu|nv|nccl)")
shipped = set(os.listdir(lib))
syms = {}
unversioned = {"libnccl.so.2": re.compile(r"^nccl"), "libcuda.so.1": re.compile(r"^cu[A-Z]")}
for o in objs:
    out_nm = subprocess.run(["nm", "-D", "--undefined-only", o],
                            check=True, capture_output=True, text=True).stdout
    for line in out_nm.splitlines():
        if not line.split():
            continue
        name = line.split()[-1]
        if "@" in name:
            sym, ver = name.split("@", 1)
            ver = ver.lstrip("@")
            if cuda.match(ver):
                syms.setdefault(ver, {})[sym] = True
        else:
            for so, pat in unversioned.items():
                if pat.match(name):
                    syms.setdefault(so, {})[name] = False
# sonames to provide: everything with imported symbols plus libcurand (linked,
# no symbols imported); skip anything the wheel itself ships.
sonames = (set(syms) | {"libcurand.so.10"}) - shipped
if not any(s.startswith("libcudart.so") for s in sonames):
    sys.exit("no libcudart.so.* imports found: nm too old to print symbol versions?")
STR = re.compile(r"(ErrorString|ErrorName|StatusString|StatusName)$|^ncclGetLastError$")
for so in sorted(sonames):
    table = syms.get(so, {})
    c = ['/* facekit CPU-only stub for %s: CUDA is not available. */' % so,
         'static const char facekit_msg[] = "CUDA unavailable (facekit CPU-only stub)";',
         'static void *facekit_handle[16];']
    for s in sorted(table):
        if STR.search(s):
            c.append("const char *%s(void) { return facekit_msg; }" % s)
        elif s == "__cudaRegisterFatBinary":
            c.append("void **%s(void) { return facekit_handle; }" % s)
        else:  # 100 == cudaErrorNoDevice; any non-zero status for the others
            c.append("int %s(void) { return 100; }" % s)
    with open(os.path.join(out, so + ".c"), "w") as f:
        f.write("\n".join(c) + "\n")
    versioned = sorted(s for s, v in table.items() if v)
    if versioned:
        with open(os.path.join(out, so + ".map"), "w") as f:
            f.write("%s {\n  global:\n%s\n  local: *;\n};\n" % (
                so, "\n".join("    %s;" % s for s in sorted(table))))
    print(so)
EOF
  for src in "$STUB_SRC"/*.c; do
    so="$(basename "$src" .c)"
    args=(-shared -fPIC -O1 -w -o "$TORCH_LIB/$so" "-Wl,-soname,$so")
    [[ -f "$STUB_SRC/$so.map" ]] && args+=("-Wl,--version-script=$STUB_SRC/$so.map")
    cc "${args[@]}" "$src" || die "cc failed building stub $so"
  done
  log "stubs: $(cd "$STUB_SRC" && ls *.c | sed 's/\.c$//' | tr '\n' ' ')"
fi

log "verifying"
verify >&2 || die "venv built but 'import torch; facenet_pytorch.MTCNN' check failed (see above); FACEKIT_PEER_REAL_CUDA=1 installs the real CUDA deps instead"
echo "$SPEC" > "$MARKER"
log "done in $((SECONDS - start)) s; size $(du -sh "$VENV" | cut -f1)"
echo "$VPY"
