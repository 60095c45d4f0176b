"""Time YOSO's sampling primitives: NumPy always, CuPy kernels too when a GPU is present.

    PYTHONPATH=. python benchmarks/bench_lsh.py [--sizes 512 1024 2048 4096] [--repeat 3] [--no-weighted]

(or without PYTHONPATH once the package is installed: pip install -e .)

Inputs as in a YOSO layer: batch * heads = 12 rows, head dim 64, num_hash 64, hash_code_len 9, unit-norm queries and
keys, codes from fast_hash. The weighted cumulation gets the backward's shapes (weights of width 64).
Each time is the best of --repeat runs, in ms for all 12 rows (and per row).
"""
import argparse
import time

import numpy as np

from yoso_np import lsh

ROWS, DIM, NUM_HASH, CODE_LEN = 12, 64, 64, 9


def best_time(function, repeat, synchronize=lambda: None):
    function()  # warm up (kernel compilation, caches)
    synchronize()
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def inputs(n, xp):
    rng = np.random.default_rng(n)
    query, key, value, grad = (rng.standard_normal((ROWS, n, DIM)).astype(np.float32) for _ in range(4))
    query /= np.linalg.norm(query, axis=-1, keepdims=True)
    key /= np.linalg.norm(key, axis=-1, keepdims=True)
    mask = np.ones((ROWS, n), dtype=np.int32)
    dmat = lsh.draw_hash_matrices(rng, ROWS, DIM, NUM_HASH, CODE_LEN, use_fast_hash=True)
    rmat = lsh.draw_hash_matrices(rng, ROWS, DIM, NUM_HASH, CODE_LEN, use_fast_hash=False)
    arrays = dict(mask=mask, query=query, key=key, value=value, grad=grad, dmat=dmat, rmat=rmat)
    arrays = {name: xp.asarray(a) for name, a in arrays.items()}
    arrays["query_codes"] = lsh.fast_hash(arrays["mask"], arrays["query"], arrays["dmat"], NUM_HASH, CODE_LEN)
    arrays["key_codes"] = lsh.fast_hash(arrays["mask"], arrays["key"], arrays["dmat"], NUM_HASH, CODE_LEN)
    return arrays


def cases(a, weighted):
    capacity = 2**CODE_LEN
    yield "fast_hash", lambda: lsh.fast_hash(a["mask"], a["query"], a["dmat"], NUM_HASH, CODE_LEN)
    yield "gaussian_hash", lambda: lsh.gaussian_hash(a["mask"], a["query"], a["rmat"], NUM_HASH, CODE_LEN)
    yield "lsh_cumulation", lambda: lsh.lsh_cumulation(a["mask"], a["query_codes"], a["mask"], a["key_codes"],
                                                       a["value"], capacity)
    if weighted:
        yield "lsh_weighted_cumulation", lambda: lsh.lsh_weighted_cumulation(
            a["mask"], a["query_codes"], a["grad"], a["mask"], a["key_codes"], a["value"], a["key"], capacity)


def run(backend, xp, sizes, repeat, weighted, synchronize=lambda: None):
    print(f"\n{backend}: {ROWS} rows (batch * heads), head dim {DIM}, num_hash {NUM_HASH}, hash_code_len {CODE_LEN}")
    print(f"{'function':<26}{'n':>7}{'ms (12 rows)':>15}{'ms / row':>11}")
    for n in sizes:
        arrays = inputs(n, xp)
        for name, function in cases(arrays, weighted):
            seconds = best_time(function, repeat, synchronize)
            print(f"{name:<26}{n:>7}{seconds * 1e3:>15.1f}{seconds * 1e3 / ROWS:>11.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--gpu-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-weighted", dest="weighted", action="store_false")
    args = parser.parse_args()
    run("NumPy", np, args.sizes, args.repeat, args.weighted)
    try:
        import cupy
        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, or no driver / device
        has_gpu = False
    if has_gpu:
        run("CuPy", cupy, args.gpu_sizes, args.repeat, args.weighted, cupy.cuda.Device().synchronize)
    else:
        print("\nCuPy: skipped (no cupy or no CUDA device)")


if __name__ == "__main__":
    main()
