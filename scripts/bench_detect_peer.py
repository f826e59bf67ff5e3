#!/usr/bin/env python3
"""Time facenet-pytorch's MTCNN face detection on CPU (the peer for facekit).

Usage (run with the venv python printed by scripts/peer_env.sh):
    python bench_detect_peer.py --threads N --repeat R --long-side L IMAGE...

Each image is loaded with PIL (.convert("RGB")) and, if L > 0, resized with
bilinear filtering so that its long side is L, all before any timing. One
MTCNN(keep_all=True, device="cpu") is built, torch.set_num_threads(N) is set,
one warm-up call is made, then mtcnn.detect(img, landmarks=True) is timed R
times per image. Prints one JSON object to stdout; face counts go to stderr.
"""
import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import time

import torch
from facenet_pytorch import MTCNN
from PIL import Image


def load(path, long_side):
    with Image.open(path) as im:
        img = im.convert("RGB")
    if long_side > 0:
        w, h = img.size
        scale = long_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != img.size:
            img = img.resize(size, Image.BILINEAR)
    return img


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    ap.add_argument("--repeat", type=int, required=True, help="timed calls per image")
    ap.add_argument("--long-side", type=int, required=True,
                    help="resize so the long side is this many px (0 = original size)")
    ap.add_argument("images", nargs="+", metavar="IMAGE")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeat < 1 or args.long_side < 0:
        ap.error("--threads and --repeat must be >= 1, --long-side >= 0")

    images = []
    for path in args.images:
        try:
            images.append((path, load(path, args.long_side)))
        except (OSError, ValueError) as e:
            sys.exit(f"bench_detect_peer: cannot load {path}: {e}")

    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"bench_detect_peer: WARNING: 1-min load average is {load1:.2f}; "
              "timings with --threads > 1 degrade badly when the cores are busy",
              file=sys.stderr)

    mtcnn = MTCNN(keep_all=True, device="cpu")
    torch.set_num_threads(args.threads)
    mtcnn.detect(images[0][1], landmarks=True)  # warm-up

    all_ms, per_image = [], {}
    for path, img in images:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            boxes, _, _ = mtcnn.detect(img, landmarks=True)
            times.append((time.perf_counter() - t0) * 1e3)
        all_ms.extend(times)
        per_image[path] = round(statistics.median(times), 3)
        faces = 0 if boxes is None else len(boxes)
        print(f"{path}: {img.size[0]}x{img.size[1]} faces={faces} "
              f"median={per_image[path]:.1f} ms", file=sys.stderr)

    print(json.dumps({
        "tool": "facenet-pytorch",
        "version": importlib.metadata.version("facenet-pytorch"),
        "torch": torch.__version__,
        "threads": args.threads,
        "long_side": args.long_side,
        "images": len(images),
        "median_ms": round(statistics.median(all_ms), 3),
        "per_image_median_ms": per_image,
    }))


if __name__ == "__main__":
    main()
