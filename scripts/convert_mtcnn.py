#!/usr/bin/env python3
"""Convert facenet-pytorch 2.6.0's MTCNN weights into models/mtcnn.safetensors.

Reproducible and offline after the first download:
  * downloads the pinned wheel from PyPI (`pip download --no-deps`) into a git-ignored
    cache (`$FACEKIT_CACHE`, default ~/.cache/facekit), unless it is already there;
  * checks the wheel's sha256 and the sha256 of each .pt file inside it;
  * reads the legacy (pre-1.6, non-zip) torch.save streams with a restricted unpickler
    (no torch needed, no arbitrary code run), honouring each tensor's strides
    (the conv/dense weights are stored Fortran-contiguous);
  * writes one safetensors file with tensors named `pnet.*`, `rnet.*`, `onet.*`,
    row-major, sorted by name, with a fixed header: byte-for-byte reproducible.

Usage: python3 scripts/convert_mtcnn.py [--out models/mtcnn.safetensors] [--check]
  --check   convert into memory and compare with the committed file (exit 1 on mismatch)
Standard library only.
"""

import argparse
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

PACKAGE = "facenet-pytorch==2.6.0"
WHEEL = "facenet_pytorch-2.6.0-py3-none-any.whl"
WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
# sha256 of each .pt file inside the wheel.
PT_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def cache_dir():
    d = os.environ.get("FACEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "facekit")
    os.makedirs(d, exist_ok=True)
    return d


def fetch_wheel():
    path = os.path.join(cache_dir(), WHEEL)
    if not os.path.exists(path):
        print(f"downloading {PACKAGE} from PyPI into {cache_dir()}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", cache_dir()],
            check=True,
        )
    with open(path, "rb") as f:
        data = f.read()
    got = sha256(data)
    if got != WHEEL_SHA256:
        sys.exit(f"{path}: sha256 {got} != pinned {WHEEL_SHA256}")
    return data


class _Storage:
    """Placeholder for a torch storage referenced by persistent id."""

    def __init__(self, key, numel):
        self.key = key
        self.numel = numel


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest):
    return _Tensor(storage, storage_offset, size, stride)


class _FloatStorage:
    pass


class RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch", "FloatStorage"): _FloatStorage,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or storage_type is not _FloatStorage:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _Storage(key, numel)


def read_legacy_torch(data):
    """Return {name: (shape, row-major list of floats)} from a legacy torch.save stream."""
    f = io.BytesIO(data)
    magic = RestrictedUnpickler(f).load()
    if magic != LEGACY_MAGIC:
        raise ValueError("not a legacy torch.save stream")
    protocol = RestrictedUnpickler(f).load()
    if protocol != 1001:
        raise ValueError(f"unexpected protocol version {protocol}")
    RestrictedUnpickler(f).load()  # sys_info
    state = RestrictedUnpickler(f).load()
    keys = RestrictedUnpickler(f).load()
    storages = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        raw = f.read(4 * numel)
        if len(raw) != 4 * numel:
            raise ValueError(f"storage {key} truncated")
        storages[key] = struct.unpack(f"<{numel}f", raw)
    if f.read(1):
        raise ValueError("trailing bytes after the last storage")

    out = {}
    for name, t in state.items():
        src = storages[t.storage.key]
        shape = t.size
        n = 1
        for s in shape:
            n *= s
        values = []
        # Walk the logical index space in row-major order, reading through the strides.
        idx = [0] * len(shape)
        for _ in range(n):
            off = t.offset + sum(i * s for i, s in zip(idx, t.stride))
            values.append(src[off])
            for d in range(len(shape) - 1, -1, -1):
                idx[d] += 1
                if idx[d] < shape[d]:
                    break
                idx[d] = 0
        out[name] = (shape, values)
    return out


def safetensors_bytes(tensors, metadata):
    """Serialise {name: (shape, floats)} as safetensors (F32, sorted names, fixed layout)."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        shape, values = tensors[name]
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def convert():
    wheel = zipfile.ZipFile(io.BytesIO(fetch_wheel()))
    tensors = {}
    sources = {}
    for net in ("pnet", "rnet", "onet"):
        data = wheel.read(f"facenet_pytorch/data/{net}.pt")
        got = sha256(data)
        if got != PT_SHA256[net]:
            sys.exit(f"{net}.pt: sha256 {got} != pinned {PT_SHA256[net]}")
        sources[net] = got
        for name, value in read_legacy_torch(data).items():
            tensors[f"{net}.{name}"] = value
    metadata = {
        "source": PACKAGE,
        "licence": "MIT",
        "files": ",".join(f"{n}.pt:{h}" for n, h in sources.items()),
        "layout": "row-major; conv [out,in,kh,kw] as facenet-pytorch uses them; dense [out,in]",
    }
    return safetensors_bytes(tensors, metadata)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "models", "mtcnn.safetensors"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    blob = convert()
    if args.check:
        with open(args.out, "rb") as f:
            committed = f.read()
        if committed != blob:
            sys.exit(f"{args.out} differs from a fresh conversion (sha256 {sha256(committed)} vs {sha256(blob)})")
        print(f"{args.out}: identical to a fresh conversion, sha256 {sha256(blob)}")
        return
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(blob)} bytes), sha256 {sha256(blob)}")


if __name__ == "__main__":
    main()
