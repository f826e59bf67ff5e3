#!/usr/bin/env python3
"""face_recognition end to end over a list of photos: the peer run of scripts/bench-e2e.sh.

Usage (run with the venv python printed by scripts/peer_dlib_env.sh):
    python bench_e2e_peer.py --processes N LIST_FILE

LIST_FILE holds one photo path per line. The photos are split into N contiguous shares, one
per worker process (multiprocessing, fork), as a user of face_recognition would parallelise a
batch job. Each worker does what face_recognition's CLI does per photo: load_image_file,
face_locations (HOG, upsample 1), face_encodings (5-point landmarks, num_jitters 1) of every
face. With --cli-style, photos larger than 1600 px are first shrunk to fit 1600x1600 (Lanczos),
as face_recognition's own CLI (`face_recognition` command, test_image) does before detecting.
Each worker is pinned to one BLAS thread. Prints one JSON line to stdout: photos, faces,
seconds (wall time of the pool, excluding interpreter start and imports, which the caller's
whole-process timing includes).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import face_recognition  # noqa: E402  (after the BLAS thread settings)
from multiprocessing import Pool  # noqa: E402


CLI_STYLE = False


def work(paths):
    faces = 0
    for p in paths:
        img = face_recognition.load_image_file(p)
        if CLI_STYLE and max(img.shape) > 1600:
            import numpy as np
            import PIL.Image
            pil = PIL.Image.fromarray(img)
            pil.thumbnail((1600, 1600), PIL.Image.LANCZOS)
            img = np.array(pil)
        locs = face_recognition.face_locations(img, number_of_times_to_upsample=1, model="hog")
        enc = face_recognition.face_encodings(img, known_face_locations=locs, num_jitters=1)
        faces += len(enc)
    return len(paths), faces


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--cli-style", action="store_true",
                    help="shrink photos over 1600 px first, as face_recognition's CLI does")
    ap.add_argument("list_file")
    args = ap.parse_args()
    global CLI_STYLE
    CLI_STYLE = args.cli_style
    with open(args.list_file) as f:
        paths = [line.strip() for line in f if line.strip()]
    n = max(1, args.processes)
    k = (len(paths) + n - 1) // n
    shares = [paths[i * k:(i + 1) * k] for i in range(n)]
    t = time.perf_counter()
    with Pool(n) as pool:
        results = pool.map(work, shares)
    secs = time.perf_counter() - t
    print(json.dumps({"photos": sum(r[0] for r in results), "faces": sum(r[1] for r in results),
                      "seconds": round(secs, 3)}))


if __name__ == "__main__":
    sys.exit(main())
