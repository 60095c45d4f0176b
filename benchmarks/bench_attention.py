"""YOSO attention alone (one base-width layer's self-attention: hidden 768, 12 heads, m = 64, L = 9, batch 1):
YOSO-E against YOSO sampling, with torch's scaled_dot_product_attention (softmax attention) beside them where
torch is installed. NumPy on the CPU; CuPy on a GPU when one is present (then n up to 16384).

    python benchmarks/bench_attention.py                      # CPU: n = 512 .. 4096
    python benchmarks/bench_attention.py --device cuda        # GPU: n = 512 .. 16384, with the bandwidth floor
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import yoso_np  # noqa: E402
from yoso_np import layers  # noqa: E402
from yoso_np.backend import to_device  # noqa: E402


def timed(fn, repeats, sync):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bandwidth_floor_bytes(n, heads=12, d=64, m=64):
    """Bytes the sampling attention must move at least (float32, int32), per call:
    read Q, K, V once to hash and cumulate (3 n h d 4), write and read back the codes of queries and keys
    (2 x 2 n h m 4), write the output (n h d 4). The hash tables live in shared memory, and the projections
    are recomputed from Dmat in registers / shared memory, so neither reaches DRAM."""
    return 4 * n * heads * (3 * d + 4 * m + d)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lengths", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lengths = [int(n) for n in (args.lengths or ("512,1024,2048,4096" if args.device == "cpu"
                                                 else "512,1024,2048,4096,8192,16384")).split(",")]
    sync = lambda: None
    if args.device == "cuda":
        import cupy
        sync = cupy.cuda.Device().synchronize
        peak_gbs = None
        try:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            peak_gbs = 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 / 1e9
        except Exception:  # attribute names differ across CUDA versions
            pass
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None

    hidden, heads = 768, 12
    rows = ["| n | YOSO-E (ms) | YOSO sampling (ms) | sampling / E | torch SDPA (ms) |"
            + (" floor (ms) | sampling / floor |" if args.device == "cuda" else ""),
            "|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.device == "cuda" else "")]
    rng = np.random.default_rng(0)
    for n in lengths:
        params = {f"{name}.{kind}": rng.standard_normal(shape).astype(np.float32) * 0.03
                  for name in ("query", "key", "value")
                  for kind, shape in (("weight", (hidden, hidden)), ("bias", (hidden,)))}
        x = rng.standard_normal((1, n, hidden)).astype(np.float32)
        params, x = ({k: to_device(v, args.device) for k, v in params.items()}, to_device(x, args.device))
        mask = to_device(np.ones((1, n), np.float32), args.device)
        times = {}
        for mode in (True, False):
            config = yoso_np.YosoConfig(max_position_embeddings=max(4096, n), use_expectation=mode)
            times[mode] = timed(lambda: layers.attention(params, x, mask, config, rng=np.random.default_rng(0)),
                                args.repeats, sync)
        sdpa = "-"
        if torch is not None:
            dev = "cuda" if args.device == "cuda" else "cpu"
            q, k, v = (torch.randn(1, heads, n, hidden // heads, device=dev) for _ in range(3))
            tsync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
            with torch.no_grad():
                sdpa = f"{1e3 * timed(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats, tsync):.1f}"
        row = f"| {n} | {1e3 * times[True]:.1f} | {1e3 * times[False]:.1f} | {times[False] / times[True]:.2f} | {sdpa} |"
        if args.device == "cuda" and peak_gbs:
            floor = bandwidth_floor_bytes(n) / (peak_gbs * 1e9)
            row += f" {1e3 * floor:.3f} | {times[False] / floor:.1f} |"
        rows.append(row)
        print(f"n={n} done", file=sys.stderr, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
