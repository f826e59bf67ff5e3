#!/usr/bin/env bash
# Issue #10's acceptance run: a corpus of bad and odd inputs (examples/bad_corpus.rs: truncations,
# bombs in every format, odd names, EXIF 1-8, CMYK/YCCK, 16-bit, palette, animated, special files,
# N seeded mutants) through `facekit detect`, `verify` (one process per input, peak RSS of each
# measured with /usr/bin/time -v), `embed`, `cluster` and `threshold-sweep` (one run over the whole
# corpus), each under `timeout` and an address-space cap. Prints a table and plain counts.
#
#   scripts/bad-inputs.sh [--mutants N] [--seed S] [--keep]
#
# Environment: FACEKIT_BIN (the binary to test; default target/release/facekit), FILE_TIMEOUT (s, default 30), DIR_TIMEOUT (s, default 600), MEM_CAP_GB (address
# space of every facekit run, default 6: keeps an unbounded decode from taking the machine down;
# hitting it shows as a signal). Not run by CI (several minutes).
set -uo pipefail
cd "$(dirname "$0")/.."

MUTANTS=500
SEED=1
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --mutants) MUTANTS="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "usage: $0 [--mutants N] [--seed S] [--keep]" >&2; exit 2 ;;
    esac
done
FILE_TIMEOUT="${FILE_TIMEOUT:-30}"
DIR_TIMEOUT="${DIR_TIMEOUT:-600}"
MEM_CAP_KB=$(( ${MEM_CAP_GB:-6} * 1024 * 1024 ))

if [ ! -x /usr/bin/time ] || ! /usr/bin/time -v true >/dev/null 2>&1; then
    echo "error: GNU time (/usr/bin/time with -v) is needed to measure peak RSS." >&2
    echo "       Install it with: apt-get install time" >&2
    exit 2
fi
command -v timeout >/dev/null || { echo "error: timeout (coreutils) is needed" >&2; exit 2; }

echo "== building (release): facekit and examples/bad_corpus"
cargo build --release --bin facekit --example bad_corpus || exit 2
# FACEKIT_BIN: test another binary (e.g. a copy, so rebuilding during a long run changes nothing).
BIN="${FACEKIT_BIN:-$PWD/target/release/facekit}"
GOOD="$PWD/tests/fixtures/Tom_Cruise_avp_2014_4.jpg"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/facekit-bad-inputs.XXXXXX")"
if [ "$KEEP" = 1 ]; then
    echo "== keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
CORPUS="$WORK/corpus"
echo "== generating the corpus into $CORPUS (mutants: $MUTANTS, seed: $SEED)"
"$PWD/target/release/examples/bad_corpus" "$CORPUS" --mutants "$MUTANTS" --seed "$SEED" || exit 2
export FACEKIT_CACHE="$WORK/cache"
unset FACEKIT_MODELS

# run_capped OUT ERR TIMEF TIMEOUT CMD...: runs CMD with stdout/stderr to files, under timeout and
# the address-space cap, peak RSS in TIMEF. Returns CMD's exit status (124: timed out).
run_capped() {
    local out="$1" err="$2" timef="$3" limit="$4"
    shift 4
    (
        ulimit -v "$MEM_CAP_KB"
        exec /usr/bin/time -v -o "$timef" timeout -k 5 "$limit" "$@" >"$out" 2>"$err" </dev/null
    )
}

# peak_mb TIMEF: "Maximum resident set size (kbytes)" in MB.
peak_mb() {
    awk -F': ' '/Maximum resident set size/ {printf "%d", $2 / 1024; found=1} END {if (!found) print 0}' "$1"
}

ROWS=()
FAILED_BY_DETECT="$WORK/failed-by-detect.txt"
: >"$FAILED_BY_DETECT"
DETAILS="$WORK/details.txt"
: >"$DETAILS"

# per_file NAME OKCODES CMD-PREFIX...: one process per corpus entry (the entry is the last arg).
per_file() {
    local name="$1" okcodes="$2"
    shift 2
    local n=0 ok=0 named=0 panics=0 hangs=0 signals=0 unnamed=0 max=0 maxin="-"
    local out="$WORK/o" err="$WORK/e" timef="$WORK/t"
    while IFS= read -r -d '' f; do
        n=$((n + 1))
        run_capped "$out" "$err" "$timef" "$FILE_TIMEOUT" "$@" "$f"
        local code=$?
        local rss
        rss=$(peak_mb "$timef")
        if [ "$rss" -gt "$max" ]; then max=$rss; maxin="${f#"$CORPUS"/}"; fi
        local base
        base="$(basename -- "$f")"
        local what
        if [ "$code" = 101 ] || grep -q "panicked" "$err"; then
            panics=$((panics + 1)); what=panic
        elif [ "$code" = 124 ] || [ "$code" = 137 ]; then
            hangs=$((hangs + 1)); what=hang
        elif [ "$code" -gt 128 ]; then
            signals=$((signals + 1)); what="signal $((code - 128))"
        elif [[ " $okcodes " == *" $code "* ]]; then
            ok=$((ok + 1)); what=ok
        elif grep -qF -- "$base" "$err"; then
            named=$((named + 1)); what=named
            [ "$name" = detect ] && printf '%s\0' "$f" >>"$FAILED_BY_DETECT"
        else
            unnamed=$((unnamed + 1)); what=unnamed
            [ "$name" = detect ] && printf '%s\0' "$f" >>"$FAILED_BY_DETECT"
        fi
        if [ "$what" != ok ] && [ "$what" != named ]; then
            printf '%s\t%s\texit %s\t%s MB\t%s\t%s\n' "$name" "$what" "$code" "$rss" "${f#"$CORPUS"/}" \
                "$(grep -m1 -E 'panicked|error' "$err" | tr '\t' ' ' | cut -c1-160)" >>"$DETAILS"
        fi
    done < <(find "$CORPUS" -mindepth 2 \( -type f -o -type l -o -type p \) -print0 | sort -z)
    ROWS+=("$(printf '%-16s %7d %6d %8d %7d %6d %8d %9d %9d  %s' "$name" "$n" "$ok" "$named" "$panics" "$hangs" "$signals" "$unnamed" "$max" "$maxin")")
    TOTAL_PANICS=$((TOTAL_PANICS + panics)); TOTAL_HANGS=$((TOTAL_HANGS + hangs))
    TOTAL_SIGNALS=$((TOTAL_SIGNALS + signals)); TOTAL_UNNAMED=$((TOTAL_UNNAMED + unnamed))
    if [ "$max" -gt "$MAX_RSS" ]; then MAX_RSS=$max; MAX_RSS_AT="$name $maxin"; fi
}

# whole_dir NAME CMD...: one process over the whole corpus. "named" counts the files that failed
# in the per-file detect run and are named on this run's stderr; "unnamed" those that are not
# (files not named like images, which a walk passes over silently by design, count as ok).
whole_dir() {
    local name="$1"
    shift
    local out="$WORK/$name.out" err="$WORK/$name.err" timef="$WORK/$name.time"
    run_capped "$out" "$err" "$timef" "$DIR_TIMEOUT" "$@"
    local code=$?
    local rss panics=0 hangs=0 signals=0 ok=0 named=0 unnamed=0 n
    rss=$(peak_mb "$timef")
    n=$(find "$CORPUS" -mindepth 2 \( -type f -o -type l -o -type p \) | wc -l)
    if [ "$code" = 101 ] || grep -q "panicked" "$err"; then panics=1
    elif [ "$code" = 124 ] || [ "$code" = 137 ]; then hangs=1
    elif [ "$code" -gt 128 ]; then signals=1
    fi
    if [ "$panics$hangs$signals" = 000 ]; then
        while IFS= read -r -d '' f; do
            if grep -qF -- "$(basename -- "$f")" "$err"; then named=$((named + 1))
            elif ! [[ "${f,,}" =~ \.(jpg|jpeg|jpe|jfif|png|webp|bmp|dib|tif|tiff|gif)$ ]]; then
                # A walk passes over files not named like images (README.txt) by design; named
                # directly (the per-file run) they are errors.
                :
            else unnamed=$((unnamed + 1)); fi
        done <"$FAILED_BY_DETECT"
        ok=$(( n - named - unnamed ))
    fi
    printf '%s\t%s\texit %s\t%s MB\t(whole corpus)\t%s\n' "$name" "run" "$code" "$rss" \
        "$(grep -m1 -E 'panicked|error' "$err" | cut -c1-200)" >>"$DETAILS"
    ROWS+=("$(printf '%-16s %7d %6s %8s %7d %6d %8d %9s %9d  %s' "$name" "$n" "$ok" "$named" "$panics" "$hangs" "$signals" "$unnamed" "$rss" "(whole corpus, exit $code)")")
    TOTAL_PANICS=$((TOTAL_PANICS + panics)); TOTAL_HANGS=$((TOTAL_HANGS + hangs))
    TOTAL_SIGNALS=$((TOTAL_SIGNALS + signals)); TOTAL_UNNAMED=$((TOTAL_UNNAMED + unnamed))
}

TOTAL_PANICS=0 TOTAL_HANGS=0 TOTAL_SIGNALS=0 TOTAL_UNNAMED=0 MAX_RSS=0 MAX_RSS_AT="-"
echo "== detect --json, one process per input"
per_file detect "0" "$BIN" detect --json
echo "== verify GOOD INPUT, one process per input"
per_file verify "0 1" "$BIN" verify "$GOOD"
echo "== embed over the corpus"
whole_dir embed "$BIN" embed "$CORPUS"
echo "== cluster over the corpus"
whole_dir cluster "$BIN" cluster "$CORPUS" --out "$WORK/clustered" --json
echo "== threshold-sweep over the corpus (each folder an identity)"
whole_dir threshold-sweep "$BIN" threshold-sweep "$CORPUS" --json

echo
echo "Per command (per-file rows: counts of inputs; whole-corpus rows: ok/named/unnamed count the"
echo "files that failed in the per-file detect run and whether this run's stderr names them):"
printf '%-16s %7s %6s %8s %7s %6s %8s %9s %9s  %s\n' command inputs ok named-err panics hangs signals unnamed maxRSS_MB "largest-RSS input"
for r in "${ROWS[@]}"; do echo "$r"; done
echo
echo "Problems (first line of stderr), also in $DETAILS:"
cut -c1-300 "$DETAILS" | head -200
echo
echo "panics: $TOTAL_PANICS"
echo "hangs: $TOTAL_HANGS"
echo "signals: $TOTAL_SIGNALS"
echo "failures not naming their file: $TOTAL_UNNAMED"
echo "largest peak RSS per input: $MAX_RSS MB ($MAX_RSS_AT)"
if [ $((TOTAL_PANICS + TOTAL_HANGS + TOTAL_SIGNALS + TOTAL_UNNAMED)) -eq 0 ] && [ "$MAX_RSS" -le 1024 ]; then
    echo "RESULT: PASS"
else
    echo "RESULT: FAIL"
    exit 1
fi
