#!/usr/bin/env python3
"""face_recognition encodings of every LFW-deepfunneled photo, for examples/eval_identify.rs.

Usage (run with the venv python printed by scripts/peer_dlib_env.sh):
    python eval_identify_peer.py --root LFW_DEEPFUNNELED --out DIR [--workers 2]
                                 [--npz ../shared/golden/lfw_face_recognition.npz]

Per photo, exactly as ../shared/golden/lfw_face_recognition.npz was made (checked: same
encodings on its 7,701 photos): load_image_file (RGB, no EXIF orientation), face_locations
with HOG and upsample 1 (boxes trimmed to the image), the largest box, or the full-image box
(0, w, h, 0) when HOG finds none, then face_encodings on that box (dlib's 5-point predictor
and the ResNet, num_jitters 1).

Writes to DIR (a cache: reused when the photo list and settings are unchanged):
    lfw_paths.txt       one path per line, relative to the root, sorted
    lfw_encodings.f32   len(paths) x 128 little-endian float32, same order
    lfw_meta.json       seconds, images/s, workers, HOG fallbacks, the max L2 difference to the
                        npz on the photos it covers, and rank-1 with face_recognition's own
                        face_distance on the closed-set protocol (gallery = first photo by
                        number of each person with >= 2 photos), which eval_identify checks
Progress goes to stderr; nothing is printed to stdout.
"""
import argparse
import json
import os
import sys
import time

# One BLAS thread per worker process (the workers are the parallelism); set before dlib loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SETTINGS = "v2 hog upsample=1, largest trimmed box, full-image box fallback, 5-point, jitters=1"


def log(msg):
    print(f"eval_identify_peer: {msg}", file=sys.stderr, flush=True)


def list_photos(root):
    paths = []
    for person in sorted(os.listdir(root)):
        d = os.path.join(root, person)
        if os.path.isdir(d):
            paths += [f"{person}/{f}" for f in sorted(os.listdir(d)) if f.endswith(".jpg")]
    return sorted(paths)


_ROOT = None


def _init(root):
    global _ROOT
    _ROOT = root
    import warnings
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import face_recognition  # noqa: F401  (loads the models once per worker)


def encode(rel):
    """(128-d float32 encoding, HOG fallback?, number of HOG faces)."""
    import numpy as np
    import face_recognition

    img = face_recognition.load_image_file(os.path.join(_ROOT, rel))
    # face_locations: boxes in css order (top, right, bottom, left), trimmed to the image;
    # the largest trimmed box (first on ties) is encoded from that trimmed box.
    boxes = face_recognition.face_locations(img, number_of_times_to_upsample=1, model="hog")
    if boxes:
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
    else:
        h, w = img.shape[:2]
        box = (0, w, h, 0)
    enc = face_recognition.face_encodings(img, known_face_locations=[box], num_jitters=1)[0]
    return np.asarray(enc, dtype=np.float32), not boxes, len(boxes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="lfw-deepfunneled directory")
    ap.add_argument("--out", required=True, help="cache directory for the encodings")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--npz", help="lfw_face_recognition.npz to compare with")
    args = ap.parse_args(argv)
    import numpy as np

    paths = list_photos(args.root)
    os.makedirs(args.out, exist_ok=True)
    f_paths = os.path.join(args.out, "lfw_paths.txt")
    f_enc = os.path.join(args.out, "lfw_encodings.f32")
    f_meta = os.path.join(args.out, "lfw_meta.json")
    meta = None
    try:
        with open(f_meta) as f:
            meta = json.load(f)
        with open(f_paths) as f:
            cached = f.read().splitlines()
        enc = np.fromfile(f_enc, dtype="<f4").reshape(-1, 128)
        if cached != paths or meta.get("settings") != SETTINGS or len(enc) != len(paths):
            meta = None
        else:
            log(f"reusing {args.out} ({len(paths)} encodings)")
    except (OSError, ValueError, json.JSONDecodeError):
        meta = None

    if meta is None:
        from multiprocessing import Pool
        log(f"encoding {len(paths)} photos with {args.workers} processes")
        t0 = time.perf_counter()
        with Pool(args.workers, initializer=_init, initargs=(args.root,)) as pool:
            out = []
            for i, r in enumerate(pool.imap(encode, paths, chunksize=16)):
                out.append(r)
                if (i + 1) % 1000 == 0:
                    log(f"{i + 1}/{len(paths)} ({(i + 1) / (time.perf_counter() - t0):.1f}/s)")
        seconds = time.perf_counter() - t0
        enc = np.stack([r[0] for r in out]).astype("<f4")
        meta = {
            "settings": SETTINGS,
            "images": len(paths),
            "computed": len(paths),
            "seconds": round(seconds, 1),
            "images_per_second": round(len(paths) / seconds, 2),
            "workers": args.workers,
            "hog_fallback": int(sum(r[1] for r in out)),
            "multi_face": int(sum(r[2] > 1 for r in out)),
        }
        # Written to temporary names first: a killed run never leaves a mismatched set.
        for name, write in ((f_enc, lambda p: enc.tofile(p)),
                            (f_paths, lambda p: open(p, "w").write("\n".join(paths) + "\n"))):
            write(name + ".tmp")
            os.replace(name + ".tmp", name)
    else:
        meta["computed"] = 0

    if args.npz:
        z = np.load(args.npz)
        index = {p: i for i, p in enumerate(paths)}
        rows = [(index[str(p)], j) for j, p in enumerate(z["paths"]) if str(p) in index]
        ours = enc[[i for i, _ in rows]]
        theirs = z["encodings"][[j for _, j in rows]]
        meta["npz_overlap"] = len(rows)
        meta["npz_max_l2"] = float(np.linalg.norm(ours - theirs, axis=1).max())

    # Closed-set rank-1 with face_recognition's own face_distance (the check on the protocol).
    import warnings
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import face_recognition
    by_person = {}
    for i, p in enumerate(paths):
        person, f = p.split("/")
        by_person.setdefault(person, []).append((int(f[:-4].rsplit("_", 1)[1]), i))
    gallery, names, probes = [], [], []
    for person in sorted(by_person):
        photos = sorted(by_person[person])
        if len(photos) >= 2:
            gallery.append(enc[photos[0][1]])
            names.append(person)
            probes += [(person, i) for _, i in photos[1:]]
    gallery = np.stack(gallery)
    right = sum(names[int(np.argmin(face_recognition.face_distance(gallery, enc[i])))] == person
                for person, i in probes)
    meta["rank1"] = right / len(probes)
    meta["rank1_probes"] = len(probes)
    with open(f_meta + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(f_meta + ".tmp", f_meta)
    log(f"done: {json.dumps(meta)}")


if __name__ == "__main__":
    main()
