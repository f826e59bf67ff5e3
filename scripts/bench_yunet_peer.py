#!/usr/bin/env python3
"""Time libfacedetection's YuNet through the yuface wheel (the peer for facekit's YuNet port).

Usage (run with the throwaway venv python that scripts/bench-yunet.sh sets up, with
OMP_NUM_THREADS set to the thread count, since the wheel's library uses OpenMP):
    OMP_NUM_THREADS=N python bench_yunet_peer.py --repeat R BGR_DIR

BGR_DIR is written by `bench_yunet --write-bgr` (examples/bench_yunet.rs): raw BGR files and
manifest.tsv (`file<TAB>width<TAB>height<TAB>source`), so this script times the very pixels
facekit is timed on (no second JPEG decoder, no second resize). Every file is loaded with numpy
as a C-contiguous (H, W, 3) uint8 array before any timing (the wheel ignores strides). One
warm-up call on the first image, then yuface.detect(img) (conf=0.5, the default) is timed R times
per image. Prints one JSON object shaped like bench_yunet's to stdout.
"""
import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np
import yuface


def median(v):
    return statistics.median(v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, required=True, help="timed calls per image")
    ap.add_argument("bgr_dir", help="directory written by bench_yunet --write-bgr")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    images = []
    with open(os.path.join(args.bgr_dir, "manifest.tsv")) as f:
        for line in f:
            if not line.strip():
                continue
            name, w, h = line.rstrip("\n").split("\t")[:3]
            w, h = int(w), int(h)
            data = np.fromfile(os.path.join(args.bgr_dir, name), dtype=np.uint8)
            if data.size != w * h * 3:
                sys.exit(f"bench_yunet_peer: {name}: {data.size} bytes, expected {w}x{h}x3")
            images.append((name, np.ascontiguousarray(data.reshape(h, w, 3))))
    if not images:
        sys.exit(f"bench_yunet_peer: {args.bgr_dir}: empty manifest")

    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"bench_yunet_peer: WARNING: 1-min load average is {load1:.2f}", file=sys.stderr)

    # yuface.detect warns on every image larger than 960 px; keep that out of the timings.
    warnings.simplefilter("ignore")
    yuface.detect(images[0][1])  # warm-up

    all_ms, per_image = [], []
    for name, img in images:
        times, faces = [], 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            confs, _, _ = yuface.detect(img)
            times.append((time.perf_counter() - t0) * 1e3)
            faces = len(confs)
        all_ms.extend(times)
        h, w = img.shape[:2]
        per_image.append({"file": name, "width": w, "height": h, "faces": faces,
                          "median_ms": round(median(times), 3)})

    print(json.dumps({
        "tool": "libfacedetection",
        "version": importlib.metadata.version("yuface"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "repeat": args.repeat,
        "images": len(images),
        "faces": sum(p["faces"] for p in per_image),
        "median_ms": round(median(all_ms), 3),
        "per_image": per_image,
    }, sort_keys=True))


if __name__ == "__main__":
    main()
