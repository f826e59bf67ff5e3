#!/usr/bin/env python3
"""Time dlib's face embedding (face_recognition / dlib ResNet) on CPU: the peer for facekit embed/verify.

Usage (run with the venv python printed by scripts/peer_dlib_env.sh):
    python bench_embed_peer.py --repeat R [--images A B]... [--golden-chips JSON]
                               [--blas-threads N] CHIP_OR_IMAGE...

Positional inputs are 150x150 aligned chips (e.g. shared/golden/dlib_chips/*.png,
dlib's own get_face_chip output). Any other size is taken as a photo: its largest
HOG face (upsample 1) is aligned with dlib's 5-point predictor and
get_face_chip(size=150, padding=0.25), as face_recognition does, before any timing.
All chips are decoded to RGB uint8 arrays before timing. The model is
face_recognition's own dlib.face_recognition_model_v1 (face_recognition.api.face_encoder).

Measured (all times wall clock, time.perf_counter; one untimed warm-up of each):
  per_face_ms_batch1   median over R x chips of one compute_face_descriptor(chip, J)
  per_face_ms_batch16  median over R x groups of compute_face_descriptor([16 chips], J) / 16
                       (groups are consecutive chips, wrapping around the list; dlib
                       runs them as one 16-image forward pass)
  verify_pair_ms       median over R x all --images A B pairs (per-pair medians and a
                       per-stage split are under details.verify_pairs) of face_recognition's
                       end-to-end verify: load_image_file both, face_locations (HOG,
                       upsample 1), face_encodings (5-point, num_jitters J) of the
                       largest face of each, face_distance; in-process, models loaded
  process_startup_ms   median wall time of `python -c "import face_recognition"` in a
                       subprocess (loads all four dlib models); one untimed warm-up run
J = --num-jitters (default 1, face_recognition's default; dlib treats 0 and 1 alike:
no jitter). Each dlib call is single-threaded except for the BLAS it links (OpenBLAS,
whose thread count is reported; --blas-threads sets OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS before dlib is loaded). `cpu_per_wall` per section is process CPU
time / wall time, i.e. the cores actually busy. Prints one JSON object to stdout;
progress and warnings go to stderr.
"""
import argparse
import ctypes
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time


def log(msg):
    print(f"bench_embed_peer: {msg}", file=sys.stderr, flush=True)


def stats(samples_ms):
    s = sorted(samples_ms)
    q = lambda p: s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]
    return {"n": len(s), "median": statistics.median(s), "min": s[0],
            "p10": q(0.10), "p90": q(0.90), "mean": statistics.fmean(s)}


class Section:
    """Wall and process-CPU time over a block, for cpu_per_wall."""

    def __enter__(self):
        gc.collect()
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.w0
        self.cpu_per_wall = round((time.process_time() - self.c0) / wall, 3) if wall > 0 else None


def blas_info():
    """OpenBLAS libraries mapped into this process and their thread counts."""
    libs = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({l.split()[-1] for l in f if "openblas" in l.lower() and "/" in l})
    except OSError:
        paths = []
    for p in paths:
        info = {"path": p}
        try:
            lib = ctypes.CDLL(p, mode=getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LAZY)
            for suffix in ("", "64_"):
                fn = getattr(lib, "openblas_get_num_threads" + suffix, None)
                if fn is None:
                    continue
                fn.restype = ctypes.c_int
                info["num_threads"] = fn()
                for name in ("openblas_get_config", "openblas_get_corename"):
                    g = getattr(lib, name + suffix, None)
                    if g is not None:
                        g.restype = ctypes.c_char_p
                        info[name[len("openblas_get_"):]] = g().decode(errors="replace").strip()
                break
        except OSError as e:
            info["error"] = str(e)
        libs.append(info)
    return libs


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, required=True,
                    help="timed rounds (over all chips / groups / pairs / startups)")
    ap.add_argument("--images", nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="a pair of photos for verify_pair_ms (repeatable)")
    ap.add_argument("--num-jitters", type=int, default=1, help="num_jitters (default 1)")
    ap.add_argument("--batch", type=int, default=16, help="batch size for (b) (default 16)")
    ap.add_argument("--startup-repeat", type=int, default=None,
                    help="timed `import face_recognition` subprocesses (default: --repeat, at most 10)")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="set OPENBLAS_NUM_THREADS/OMP_NUM_THREADS before loading dlib "
                         "(default: leave the environment alone)")
    ap.add_argument("--golden-chips", metavar="JSON",
                    help="shared/golden/dlib_chips.json: report the L2 distance of our "
                         "descriptors to its descriptor_of_chip (matched by file name)")
    ap.add_argument("chips", nargs="+", metavar="CHIP_OR_IMAGE")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.batch < 1 or args.num_jitters < 0:
        ap.error("--repeat and --batch must be >= 1, --num-jitters >= 0")
    if args.blas_threads is not None:
        if args.blas_threads < 1:
            ap.error("--blas-threads must be >= 1")
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.blas_threads)
    startup_repeat = args.startup_repeat if args.startup_repeat is not None else min(args.repeat, 10)

    # Imported here so that --blas-threads is in the environment before
    # OpenBLAS initialises (it reads OPENBLAS_NUM_THREADS once, at load).
    import warnings
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    t_imp = time.perf_counter()
    import numpy as np
    import dlib
    import face_recognition
    import face_recognition.api as fr_api
    import face_recognition_models
    from PIL import Image
    import_ms = (time.perf_counter() - t_imp) * 1e3

    encoder = fr_api.face_encoder  # dlib.face_recognition_model_v1(face_recognition_model_location())
    J = args.num_jitters

    load1_start = os.getloadavg()[0]
    if load1_start > 0.5:
        log(f"WARNING: 1-min load average is {load1_start:.2f}: other work shares the CPU, "
            "timings will be noisy/pessimistic")

    # ---- chips (decoded, and aligned for full photos, before any timing) ----
    chips, names, derived = [], [], 0
    for path in args.chips:
        try:
            with Image.open(path) as im:
                arr = np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except (OSError, ValueError) as e:
            sys.exit(f"bench_embed_peer: cannot load {path}: {e}")
        if arr.shape[:2] != (150, 150):
            rects = fr_api._raw_face_locations(arr, 1, "hog")
            if not rects:
                log(f"WARNING: {path}: {arr.shape[1]}x{arr.shape[0]} is not a chip and HOG "
                    "finds no face in it; skipped")
                continue
            r = max(rects, key=lambda r: r.width() * r.height())
            shape = fr_api.pose_predictor_5_point(arr, r)
            arr = np.ascontiguousarray(dlib.get_face_chip(arr, shape, size=150, padding=0.25))
            derived += 1
        chips.append(arr)
        names.append(os.path.basename(path))
    if not chips:
        sys.exit("bench_embed_peer: no usable chips")
    n = len(chips)
    B = args.batch
    groups = [[chips[(g * B + i) % n] for i in range(B)] for g in range(math.ceil(n / B))]
    group_names = [[names[(g * B + i) % n] for i in range(B)] for g in range(len(groups))]
    log(f"{n} chips ({derived} aligned from photos), {len(groups)} groups of {B}, "
        f"{len(args.images)} verify pairs, repeat {args.repeat}")

    # ---- warm-up (first call allocates the network's buffers) ----
    encoder.compute_face_descriptor(chips[0], J)
    encoder.compute_face_descriptor(groups[0], J)

    # ---- (a) one chip per call ----
    desc1 = [None] * n
    samples_a = []
    with Section() as sec_a:
        for _ in range(args.repeat):
            for i, c in enumerate(chips):
                t0 = time.perf_counter()
                d = encoder.compute_face_descriptor(c, J)
                samples_a.append((time.perf_counter() - t0) * 1e3)
                desc1[i] = d
    log(f"batch1: median {statistics.median(samples_a):.2f} ms/face")

    # ---- (b) batches of B chips ----
    descB = {}
    samples_b = []
    with Section() as sec_b:
        for _ in range(args.repeat):
            for g, grp in enumerate(groups):
                t0 = time.perf_counter()
                ds = encoder.compute_face_descriptor(grp, J)
                samples_b.append((time.perf_counter() - t0) * 1e3 / B)
                for nm, d in zip(group_names[g], ds):
                    descB.setdefault(nm, d)
    log(f"batch{B}: median {statistics.median(samples_b):.2f} ms/face")

    # batch vs single-chip consistency, and optional golden parity
    d1 = {nm: np.array(d) for nm, d in zip(names, desc1)}
    batch_vs_single = max(float(np.linalg.norm(d1[nm] - np.array(d))) for nm, d in descB.items())
    golden = None
    if args.golden_chips:
        with open(args.golden_chips) as f:
            ref = {os.path.basename(c["chip"]): np.array(c["descriptor_of_chip"])
                   for c in json.load(f)["chips"]}
        l2 = [float(np.linalg.norm(d1[nm] - ref[nm])) for nm in names if nm in ref]
        golden = {"file": args.golden_chips, "matched": len(l2),
                  "max_l2": max(l2) if l2 else None,
                  "mean_l2": statistics.fmean(l2) if l2 else None}
        log(f"golden parity: {golden}")

    # ---- (c) end-to-end verify pairs ----
    def encode_largest(path, timing):
        t0 = time.perf_counter()
        img = face_recognition.load_image_file(path)
        t1 = time.perf_counter()
        locs = face_recognition.face_locations(img, number_of_times_to_upsample=1, model="hog")
        t2 = time.perf_counter()
        enc = None
        if locs:
            # css (top, right, bottom, left)
            big = max(locs, key=lambda l: (l[2] - l[0]) * (l[1] - l[3]))
            enc = face_recognition.face_encodings(img, [big], num_jitters=J, model="small")[0]
        t3 = time.perf_counter()
        timing["load"] += t1 - t0
        timing["detect"] += t2 - t1
        timing["encode"] += t3 - t2
        return enc, len(locs), img.shape

    pairs = []
    all_pair_ms = []
    with Section() as sec_c:
        for a, b in args.images:
            for p in (a, b):
                if not os.path.isfile(p):
                    sys.exit(f"bench_embed_peer: no such image {p}")
            encode_largest(a, {"load": 0, "detect": 0, "encode": 0})  # warm-up (page cache)
            tot, parts = [], {"load": [], "detect": [], "encode": []}
            for _ in range(args.repeat):
                tm = {"load": 0.0, "detect": 0.0, "encode": 0.0}
                t0 = time.perf_counter()
                ea, na, sa = encode_largest(a, tm)
                eb, nb, sb = encode_largest(b, tm)
                dist = (float(face_recognition.face_distance([ea], eb)[0])
                        if ea is not None and eb is not None else None)
                tot.append((time.perf_counter() - t0) * 1e3)
                for k in parts:
                    parts[k].append(tm[k] * 1e3)
            pairs.append({
                "a": a, "b": b, "a_wh": [sa[1], sa[0]], "b_wh": [sb[1], sb[0]],
                "a_faces": na, "b_faces": nb, "distance": dist,
                "same_person_at_0.6": None if dist is None else dist <= 0.6,
                "ms": stats(tot),
                "median_ms_by_stage_both_images": {k: statistics.median(v) for k, v in parts.items()},
            })
            all_pair_ms.extend(tot)
            log(f"verify {os.path.basename(a)} vs {os.path.basename(b)}: faces {na}/{nb}, "
                f"distance {dist}, median {statistics.median(tot):.1f} ms")

    # ---- (d) process startup ----
    startup = []
    cmd = [sys.executable, "-c", "import face_recognition"]
    env = dict(os.environ)

    def spawn():
        # stderr captured: face_recognition_models prints a pkg_resources
        # deprecation warning on every import
        r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode:
            sys.exit(f"bench_embed_peer: {' '.join(cmd)} failed:\n{r.stderr.decode(errors='replace')}")

    if startup_repeat > 0:
        spawn()  # warm-up: page cache for the models
        for _ in range(startup_repeat):
            t0 = time.perf_counter()
            spawn()
            startup.append((time.perf_counter() - t0) * 1e3)
        log(f"startup: median {statistics.median(startup):.0f} ms")

    out = {
        "tool": "face_recognition (dlib face_recognition_model_v1, ResNet-29 128-d)",
        "per_face_ms_batch1": statistics.median(samples_a),
        "per_face_ms_batch16" if B == 16 else f"per_face_ms_batch{B}": statistics.median(samples_b),
        "verify_pair_ms": statistics.median(all_pair_ms) if all_pair_ms else None,
        "process_startup_ms": statistics.median(startup) if startup else None,
        "details": {
            "batch1_ms": {**stats(samples_a), "cpu_per_wall": sec_a.cpu_per_wall},
            f"batch{B}_ms_per_face": {**stats(samples_b), "cpu_per_wall": sec_b.cpu_per_wall,
                                     "groups": len(groups)},
            "batch_vs_single_max_l2": batch_vs_single,
            "golden_parity": golden,
            "verify_pairs": pairs,
            "verify_cpu_per_wall": sec_c.cpu_per_wall if args.images else None,
            "process_startup_ms": stats(startup) if startup else None,
            "in_process_import_ms": import_ms,
        },
        "config": {
            "repeat": args.repeat, "num_jitters": J, "batch": B, "chips": n,
            "chips_aligned_from_photos": derived, "startup_repeat": startup_repeat,
            "verify": "load_image_file x2, face_locations(hog, upsample 1), "
                      "face_encodings(largest face, model=small), face_distance",
        },
        "versions": {
            "python": platform.python_version(),
            "dlib": dlib.__version__,
            "face_recognition": version("face_recognition"),
            "face_recognition.__version__": getattr(face_recognition, "__version__", None),
            "face_recognition_models": version("face_recognition_models"),
            "numpy": np.__version__,
            "Pillow": version("Pillow"),
        },
        "dlib_build": {
            "USE_AVX_INSTRUCTIONS": getattr(dlib, "USE_AVX_INSTRUCTIONS", None),
            "DLIB_USE_BLAS": getattr(dlib, "DLIB_USE_BLAS", None),
            "DLIB_USE_LAPACK": getattr(dlib, "DLIB_USE_LAPACK", None),
            "DLIB_USE_CUDA": getattr(dlib, "DLIB_USE_CUDA", None),
        },
        "threads": {
            "note": "dlib runs each call on the calling thread; only its BLAS (OpenBLAS "
                    "GEMM inside the conv layers) may use more threads",
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "env": {k: os.environ.get(k) for k in
                    ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
            "openblas": blas_info(),
        },
        "machine": {
            "cpu": cpu_model(),
            "loadavg_1min_start": round(load1_start, 2),
            "loadavg_1min_end": round(os.getloadavg()[0], 2),
        },
    }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
