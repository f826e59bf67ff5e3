#!/usr/bin/env bash
# The face library at scale: a library of 1,000,000 synthetic 128-d faces (100,000 people,
# seeded) under the default pipeline, then whole `facekit identify --library LIB photo.jpg`
# processes (open, decode, detect, embed, search; 2 threads), median of 5, with peak RSS, and
# the search alone per query face. The peer, when face_recognition's venv exists
# (scripts/peer_dlib_env.sh), is what its users do for 1:N: face_recognition.face_distance
# over an in-memory matrix of the same size, timed in the same run.
#
#   bash scripts/bench-library.sh [FACES]
#
# Needs GNU time (`apt-get install time`). Uses ~1.7 GB of disk in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
FACES="${1:-1000000}"
PEOPLE=$((FACES / 10))
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 2; }
cargo build --release --bin facekit --example bench_library >&2
BIN="$PWD/target/release/facekit"
PHOTO="$PWD/tests/fixtures/lfw/Abel_Pacheco_0001.jpg"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LIB="$WORK/library.db"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

./target/release/examples/bench_library build "$LIB" --faces "$FACES" --people "$PEOPLE" > "$WORK/build"
build_s=$(awk '/^build_seconds/ {print $2}' "$WORK/build")
# The first identify builds the gallery index beside the database (once per change of people).
/usr/bin/time -f '%e %M' -o "$WORK/time" "$BIN" identify --library "$LIB" --threads 2 "$PHOTO" > /dev/null
read -r index_s index_kb < "$WORK/time"
size_mb=$(du -cm "$LIB"* | tail -1 | cut -f1)
: > "$WORK/t"; : > "$WORK/m"
for run in 1 2 3 4 5; do
    /usr/bin/time -f '%e %M' -o "$WORK/time" "$BIN" identify --library "$LIB" --threads 2 "$PHOTO" > /dev/null
    read -r secs kb < "$WORK/time"
    echo "$secs" >> "$WORK/t"; echo "$kb" >> "$WORK/m"
done
t=$(median < "$WORK/t"); m=$(sort -g "$WORK/m" | tail -1)
RAYON_NUM_THREADS=2 ./target/release/examples/bench_library search "$LIB" --queries 50 > "$WORK/search"
search_ms=$(awk '/^search_ms_median/ {print $2}' "$WORK/search")
load_s=$(awk '/^load_seconds/ {print $2}' "$WORK/search")

PEER_PY="${FACEKIT_CACHE:-$HOME/.cache/facekit}/peer-dlib-venv/bin/python"
peer_ms="-"
if [ -x "$PEER_PY" ]; then
    peer_ms=$(OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 "$PEER_PY" - "$FACES" <<'PY'
import sys, time
import numpy as np
import face_recognition
n = int(sys.argv[1])
rng = np.random.default_rng(1)
known = (rng.standard_normal((n, 128)) * 0.08).astype(np.float64)
times = []
for _ in range(10):
    q = rng.standard_normal(128) * 0.08
    t = time.perf_counter()
    d = face_recognition.face_distance(known, q)
    best = int(np.argmin(d))
    times.append((time.perf_counter() - t) * 1e3)
print(f"{sorted(times)[len(times) // 2]:.1f}")
PY
)
fi

printf '%-52s %s\n' "library" "$FACES faces, $PEOPLE people, 128-d (synthetic, seeded)"
printf '%-52s %s\n' "build (bench_library build), s" "$build_s"
printf '%-52s %s\n' "files on disk (database + gallery index), MB" "$size_mb"
printf '%-52s %s\n' "first identify (builds the gallery index), s / MB" "$index_s / $((index_kb / 1024))"
printf '%-52s %s\n' "facekit identify photo.jpg, median of 5, s" "$t"
printf '%-52s %s\n' "facekit identify photo.jpg, peak RSS, MB" "$((m / 1024))"
printf '%-52s %s\n' "gallery load (index read), s" "$load_s"
printf '%-52s %s\n' "search per query face, median of 50, ms" "$search_ms"
printf '%-52s %s\n' "face_recognition.face_distance + argmin, median, ms" "$peer_ms"
echo "(2 threads; identify = one process: open, decode, detect, embed, search, print)"
