#!/usr/bin/env python3
"""Cross-check models/dlib_resnet.safetensors against face-api.js's independent copy of dlib's ResNet.

@vladmandic/face-api 1.7.15 ships the same network as a tfjs weights manifest + .bin, most
tensors uint8-quantised (value = q * scale + min), a few float32. This script maps every
face-api tensor onto our safetensors names and layouts:

  conv32_down/conv/{filters,bias}, conv32_down/scale/{weights,biases}
      -> conv1.{weight,bias}, affine1.{weight,bias}
  convN_*/conv{1,2}/conv/{filters,bias}, .../scale/{weights,biases}   (15 residual blocks)
      -> layers.{i}.conv{1,2}.{weight,bias}, layers.{i}.affine{1,2}.{weight,bias}
  fc  [in=256, out=128], y = x W   -> fc.weight [out=128, in=256] (transposed)

Filters are HWIO in tfjs and OIHW here. Each quantised tensor must agree with ours within half a
quantisation step (scale/2, plus a tiny epsilon for float rounding); each float32 tensor must be
bit-identical. Every one of our 117 tensors must be covered exactly once.

Usage: python3 scripts/crosscheck_faceapi.py --manifest M.json --bin W.bin --weights models/dlib_resnet.safetensors
Prints a per-tensor table and a final PASS/FAIL line; exits 1 on FAIL. Standard library only.
Normally run by scripts/crosscheck_faceapi.sh, which fetches and checks the npm package.
"""

import argparse
import array
import json
import struct
import sys

# face-api block prefixes in forward order; the first is the input stage, the rest layers.0..13.
BLOCKS = [
    "conv32_down",
    "conv32_1", "conv32_2", "conv32_3",
    "conv64_down", "conv64_1", "conv64_2", "conv64_3",
    "conv128_down", "conv128_1", "conv128_2",
    "conv256_down", "conv256_1", "conv256_2",
    "conv256_down_out",
]

# Slack beyond half a step: 1e-4 of a step plus a few float32 ulps of the value (tfjs stores
# q * scale + min as float32, and the quantiser itself rounded in float32). Measured need: the
# worst value is 1.0000386 half-steps away.
EPS_STEP = 1e-4
EPS_REL = 2.0 ** -21


def load_safetensors(path):
    """Return {name: (shape, array('f'))} for the F32 tensors of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    base = 8 + n
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {info['dtype']}, expected F32")
        a, b = info["data_offsets"]
        values = array.array("f")
        values.frombytes(data[base + a:base + b])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = (tuple(info["shape"]), values)
    return out


def load_tfjs(manifest_path, bin_path):
    """Return [(name, shape, values as array('f'), quantisation dict or None)] in manifest order."""
    with open(manifest_path) as f:
        manifest = json.load(f)
    with open(bin_path, "rb") as f:
        blob = f.read()
    if len(manifest) != 1 or len(manifest[0]["paths"]) != 1:
        raise SystemExit("expected one weight group with one .bin shard")
    out = []
    pos = 0
    for w in manifest[0]["weights"]:
        shape = tuple(w["shape"])
        numel = 1
        for d in shape:
            numel *= d
        if w["dtype"] != "float32":
            raise SystemExit(f"{w['name']}: unsupported dtype {w['dtype']}")
        q = w.get("quantization")
        if q is None:
            values = array.array("f")
            values.frombytes(blob[pos:pos + 4 * numel])
            if sys.byteorder != "little":
                values.byteswap()
            pos += 4 * numel
        else:
            if q["dtype"] != "uint8":
                raise SystemExit(f"{w['name']}: unsupported quantisation {q['dtype']}")
            scale, mn = q["scale"], q["min"]
            raw = blob[pos:pos + numel]
            pos += numel
            # tfjs: Float32Array of (q * scale + min), computed in double precision.
            values = array.array("f", [b * scale + mn for b in raw])
        if len(values) != numel:
            raise SystemExit(f"{w['name']}: .bin truncated")
        out.append((w["name"], shape, values, q))
    if pos != len(blob):
        raise SystemExit(f"{bin_path}: {len(blob) - pos} bytes left after the last tensor")
    return out


def target_name(fa_name):
    """Map a face-api tensor name to (our name, layout) where layout is 'hwio', 'fc' or 'vec'."""
    if fa_name == "fc":
        return "fc.weight", "fc"
    parts = fa_name.split("/")
    block = parts[0]
    if block not in BLOCKS:
        raise SystemExit(f"unknown face-api tensor {fa_name}")
    i = BLOCKS.index(block)
    if i == 0:
        prefix, idx, rest = "", "1", parts[1:]
    else:
        if parts[1] not in ("conv1", "conv2"):
            raise SystemExit(f"unknown face-api tensor {fa_name}")
        prefix, idx, rest = f"layers.{i - 1}.", parts[1][-1], parts[2:]
    leaf = "/".join(rest)
    mapping = {
        "conv/filters": (f"conv{idx}.weight", "hwio"),
        "conv/bias": (f"conv{idx}.bias", "vec"),
        "scale/weights": (f"affine{idx}.weight", "vec"),
        "scale/biases": (f"affine{idx}.bias", "vec"),
    }
    if leaf not in mapping:
        raise SystemExit(f"unknown face-api tensor {fa_name}")
    name, layout = mapping[leaf]
    return prefix + name, layout


def to_our_layout(layout, shape, values, our_shape):
    """Reorder face-api values into our layout (OIHW conv, [out,in] fc); checks the shapes."""
    if layout == "vec":
        if shape != our_shape:
            raise SystemExit(f"shape {shape} vs ours {our_shape}")
        return values
    if layout == "fc":
        n_in, n_out = shape
        if our_shape != (n_out, n_in):
            raise SystemExit(f"fc shape {shape} (in, out) vs ours {our_shape} (out, in)")
        return array.array("f", [values[i * n_out + o] for o in range(n_out) for i in range(n_in)])
    kh, kw, ci, co = shape
    if our_shape != (co, ci, kh, kw):
        raise SystemExit(f"filters shape {shape} (HWIO) vs ours {our_shape} (OIHW)")
    out = array.array("f", bytes(4 * len(values)))
    for h in range(kh):
        for w in range(kw):
            for i in range(ci):
                src = ((h * kw + w) * ci + i) * co
                for o in range(co):
                    out[((o * ci + i) * kh + h) * kw + w] = values[src + o]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--weights", required=True)
    args = ap.parse_args()

    ours = load_safetensors(args.weights)
    theirs = load_tfjs(args.manifest, args.bin)
    seen = set()
    failures = []
    worst_ratio = 0.0
    past_half = 0  # values beyond exactly scale/2 (inside the epsilon)
    n_quant = n_f32 = 0
    print(f"{'face-api tensor':40} {'ours':26} {'kind':5} {'scale':>10} {'max|err|':>10} {'err/(s/2)':>10}  ok")
    for fa_name, shape, values, q in theirs:
        name, layout = target_name(fa_name)
        if name not in ours:
            raise SystemExit(f"{fa_name} -> {name}: not in {args.weights}")
        if name in seen:
            raise SystemExit(f"{name} covered twice")
        seen.add(name)
        our_shape, our_values = ours[name]
        mapped = to_our_layout(layout, shape, values, our_shape)
        if q is None:
            n_f32 += 1
            diff = sum(1 for a, b in zip(mapped, our_values) if struct.pack("<f", a) != struct.pack("<f", b))
            max_err = max(abs(a - b) for a, b in zip(mapped, our_values))
            ok = diff == 0
            print(f"{fa_name:40} {name:26} {'f32':5} {'-':>10} {max_err:10.3g} {'-':>10}  {'ok' if ok else f'FAIL ({diff} differ)'}")
        else:
            n_quant += 1
            half = q["scale"] / 2
            max_err = 0.0
            ratio = 0.0
            bad = 0
            for a, b in zip(mapped, our_values):
                err = abs(a - b)
                tol = half + EPS_STEP * q["scale"] + EPS_REL * abs(b)
                if err > tol:
                    bad += 1
                elif err > half:
                    past_half += 1
                max_err = max(max_err, err)
                ratio = max(ratio, err / half)
            worst_ratio = max(worst_ratio, ratio)
            ok = bad == 0
            print(f"{fa_name:40} {name:26} {'u8':5} {q['scale']:10.3g} {max_err:10.3g} {ratio:10.7f}  {'ok' if ok else f'FAIL ({bad} beyond half a step)'}")
        if not ok:
            failures.append(fa_name)
    missing = sorted(set(ours) - seen)
    if missing:
        failures.append(f"not covered by face-api: {', '.join(missing)}")
    print()
    print(f"{len(theirs)} face-api tensors ({n_quant} uint8, {n_f32} float32) vs {len(ours)} converted tensors; "
          f"worst uint8 error = {worst_ratio:.7f} x half a step "
          f"({past_half} values past exactly scale/2, all within the float32-rounding epsilon)")
    if failures:
        print("FAIL: " + "; ".join(failures))
        sys.exit(1)
    print(f"PASS: every uint8 tensor within half a quantisation step, every float32 tensor bit-identical, "
          f"all {len(ours)} tensors covered")


if __name__ == "__main__":
    main()
