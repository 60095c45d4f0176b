"""Shared helpers of bench_inference.py and bench_train.py: the machine, memory probes, weights shared with
transformers, one (impl, size) case per fresh subprocess, and the Markdown table.

A worker (the same script run with --worker CASE_JSON) builds its model, measures, saves its outputs to
CASE["out"] (.npz) and prints one JSON line; the parent compares the saved outputs with torch's.
"""
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

SEED = 0  # yoso_np's random init; torch and ONNX get the very same arrays
BASE = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, vocab_size=50265,
            max_position_embeddings=4096)
CACHE = Path(os.environ.get("YOSO_NP_BENCH_CACHE", "~/.cache/yoso_np_bench")).expanduser()


def progress(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- memory ---------------------------------------------------------------------------------------------------
def status_mib(field):
    """VmRSS (resident now) or VmHWM (resident high-water mark) of this process, in MiB."""
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M).group(1)) / 1024


def reset_high_water_mark():
    """Linux resets VmHWM to the current RSS on writing 5 to clear_refs; returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_free_memory():
    """Collect garbage and hand glibc's free heap pages back to the OS, so that the forward cannot reuse pages the
    loading left resident (which would hide part of its peak)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def measure(step, repeats, label):
    """Peak memory of ONE call of step (which is also the warm-up), then the median wall time of `repeats` calls.
    Returns (the first call's result, stats)."""
    release_free_memory()
    load_peak = status_mib("VmHWM")
    hwm_reset = reset_high_water_mark()
    baseline = status_mib("VmRSS")
    t0 = time.perf_counter()
    result = step()
    first = time.perf_counter() - t0
    peak = status_mib("VmHWM")
    progress(f"{label}: warm-up/memory run {first:.2f} s, peak extra {peak - baseline:.0f} MiB")
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        progress(f"{label}: run {i + 1}/{repeats} {times[-1]:.2f} s")
    return result, dict(time=statistics.median(times), times=times, baseline_mib=baseline,
                        extra_mib=peak - baseline, process_peak_mib=max(load_peak, peak), hwm_reset=hwm_reset)


# -- models ---------------------------------------------------------------------------------------------------
def input_arrays(batch, n, vocab_size):
    """Random token ids (never the special ids 0..2) and an all-ones mask, int64 as transformers takes them."""
    ids = np.random.default_rng(1).integers(3, vocab_size, size=(batch, n), dtype=np.int64)
    return ids, np.ones_like(ids)


def torch_model(class_name, config, weights):
    """transformers' `class_name` in eval mode holding exactly yoso_np's weights."""
    import torch
    import transformers

    if threads():
        torch.set_num_threads(threads())

    model = getattr(transformers, class_name)(transformers.YosoConfig.from_dict(config.to_dict())).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    not_buffers = set(missing) - {name for name, _ in model.named_buffers()}
    if unexpected or not_buffers:
        raise RuntimeError(f"weights do not fit transformers' {class_name}: missing {sorted(not_buffers)}, "
                           f"unexpected {sorted(unexpected)}")
    return model


# -- command line ---------------------------------------------------------------------------------------------
def add_run_arguments(parser, impls, unit):
    """--repeats, --rounds and --impl, the options every benchmark script shares; unit: what one repeat times."""
    parser.add_argument("--repeats", type=int, default=3, help=f"timed {unit} after the warm-up (median)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every case this many times, interleaved, against a drifting machine")
    parser.add_argument("--impl", default=",".join(impls), help=f"comma-separated subset of {','.join(impls)}")
    parser.add_argument("--threads", type=int, default=0,
                        help="run every implementation on this many cores: the worker is pinned to the first N and "
                             "each library's threads set to N (default: each library's own default)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run each yoso_np implementation from the yoso_np checkout in DIR (rows IMPL@base), "
                             "interleaved with this checkout's: before and after a change in one run")


def with_run_options(cases, args):
    """The cases with --threads, and with --baseline each yoso_np case followed by the same case run from that
    checkout (impl "IMPL@base")."""
    cases = [{**case, "threads": args.threads} for case in cases]
    if not args.baseline:
        return cases
    if not os.path.isdir(os.path.join(args.baseline, "yoso_np")):
        raise SystemExit(f"--baseline: {args.baseline} is not a yoso_np checkout (no yoso_np folder in it)")
    out = []
    for case in cases:
        out.append(case)
        if case["impl"] not in ("torch", "onnx"):
            out.append({**case, "impl": case["impl"] + "@base", "src": os.path.abspath(args.baseline)})
    return out


def threads_note(args):
    return f"{args.threads} threads on {args.threads} cores" if args.threads else "each library's default threads"


def chosen_impls(parser, args, impls):
    """The --impl list, or a parser error naming the unknown ones."""
    chosen = args.impl.split(",")
    unknown = sorted(set(chosen) - set(impls))
    if unknown:
        parser.error(f"--impl: unknown {unknown}, expected a subset of {list(impls)}")
    return chosen


# -- parent side ----------------------------------------------------------------------------------------------
def run_worker(script, case):
    """Run one case in a fresh interpreter; returns its JSON result, or {"error": ...}."""
    progress(f"case {case['impl']} {case['size']}: starting a fresh process")
    proc = subprocess.run([sys.executable, script, "--worker", json.dumps(case)], stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return {"error": f"worker exited with status {proc.returncode} (traceback above on stderr)"}
    return json.loads(lines[-1])


def worker_main(run_case):
    """Entry of a worker: run_case(case) -> (outputs dict of arrays, stats). An exception becomes an error row."""
    case = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    if case.get("src"):  # a --baseline case: that checkout's yoso_np
        sys.path.insert(0, case["src"])
    if case.get("threads"):
        limit_threads(case["threads"])
    try:
        outputs, stats = run_case({**case, "impl": case["impl"].split("@")[0]})
    except Exception as exc:  # reported as a skipped row, e.g. an implementation that is not finished
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    np.savez(case["out"], **{k: np.asarray(v, dtype=np.float32) for k, v in outputs.items()})
    print(json.dumps(stats))


def limit_threads(n):
    """This process on its first n cores (yoso_np sizes its pool by them) with n BLAS threads; torch and ONNX Runtime
    read THREADS through threads()."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    os.environ["YOSO_NP_BENCH_THREADS"] = str(n)


def threads():
    """The --threads setting of this worker, or None for each library's default."""
    n = os.environ.get("YOSO_NP_BENCH_THREADS")
    return int(n) if n else None


def max_abs_diff(path, ref_path):
    """Largest |a - b| over every array the two .npz files share; None when they share none."""
    with np.load(path) as a, np.load(ref_path) as b:
        return max((float(np.max(np.abs(a[k] - b[k]))) for k in b.files if k in a.files), default=None)


def machine_info():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU")
    lines = [f"- CPU: {cpu}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable)"]
    versions = []
    for pkg in ("numpy", "scipy", "numba", "torch", "transformers", "onnxruntime", "onnx"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    lines.append(f"- Python {sys.version.split()[0]}; " + ", ".join(versions))
    try:
        from threadpoolctl import threadpool_info
        blas = [f"{p['internal_api']} {p['version']} ({p.get('architecture', '?')}, {p['num_threads']} threads)"
                for p in threadpool_info() if p["user_api"] == "blas"]
    except ImportError:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = [f"{info['name']} {info['version']}"]
    lines.append("- NumPy BLAS: " + "; ".join(blas))
    from yoso_np import cpu_kernels
    compiled = cpu_kernels.collision_probability() is not None
    lines.append("- yoso_np's compiled CPU loops (numba): " + ("on" if compiled else "off (NumPy passes)"))
    return "\n".join(lines)


def markdown_table(rows, size_header, diff_header):
    """rows: dicts with size, impl and either time/extra_mib/process_peak_mib/diff or error. Times are also given
    as ratios to torch's and, where it ran, ONNX Runtime's at the same size; memory as a ratio to torch's."""
    refs = [impl for impl in ("torch", "onnx") if any(r["impl"] == impl and "error" not in r for r in rows)]
    by_impl = {(r["impl"], r["size"]): r for r in rows if "error" not in r}

    def ratio(r, key, ref):
        base = by_impl.get((ref, r["size"]))
        return f"{r[key] / base[key]:.2f}" if base and base[key] > 0 else "-"

    time_ratios = "".join(f" x {ref} |" for ref in refs)
    out = [f"| {size_header} | impl | time (s) |{time_ratios} peak extra memory (MiB) | x torch | "
           f"process peak (MiB) | {diff_header} |", "|---|---|---:|" + "---:|" * len(refs) + "---:|---:|---:|---:|"]
    notes = []
    for r in rows:
        if "error" in r:
            notes.append(f"- {r['impl']} at {size_header} {r['size']}: skipped, {r['error']}")
            continue
        diff = "-" if r.get("diff") is None else f"{r['diff']:.2e}"
        out.append(f"| {r['size']} | {r['impl']} | {r['time']:.4f} |" + "".join(f" {ratio(r, 'time', ref)} |"
                                                                              for ref in refs) +
                   f" {r['extra_mib']:.0f} | {ratio(r, 'extra_mib', 'torch')} | {r['process_peak_mib']:.0f} | {diff} |")
        if not r["hwm_reset"]:
            notes.append(f"- {r['impl']} at {r['size']}: could not reset VmHWM, so the peak may be the loading's")
    shares = {"yoso_np_sampling": "yoso_np_sampling takes {:.2f} of yoso_np's (expectation) time",
              "floor": "the floor (the sampling forward less its attention kernels) takes {:.2f} of yoso_np's time",
              "products": "the products probe (the dense layers alone, on NumPy's BLAS) takes {:.2f} of yoso_np's time"}
    for (impl, size), r in by_impl.items():
        if impl in shares and ("yoso_np", size) in by_impl:
            notes.append(f"- {size_header} {size}: " + shares[impl].format(r["time"] / by_impl["yoso_np", size]["time"]))
        if impl.endswith("@base") and (impl[:-5], size) in by_impl:
            notes.append(f"- {size_header} {size}: {impl[:-5]} takes {by_impl[impl[:-5], size]['time'] / r['time']:.2f} "
                         f"of its baseline's time")
    return "\n".join(out + ([""] + notes if notes else []))


def run_all(script, cases, out_dir, size_header, diff_header, rounds=1):
    """Run every case `rounds` times, interleaved (case 1, 2, ..., then again), so that a machine whose speed
    drifts over minutes slows every implementation alike; a case's time is the median of all its timed runs and
    its memory the largest peak. Compare each output with torch's at the same size; print the machine and the
    table."""
    rows = []
    for case in cases:
        case["out"] = str(Path(out_dir) / f"{case['impl']}_{case['size']}.npz")
    for round_ in range(rounds):
        for i, case in enumerate(cases):
            if rounds > 1:
                progress(f"round {round_ + 1}/{rounds}")
            result = run_worker(script, case)
            if round_ == 0:
                rows.append({**case, **result})
            elif "error" not in rows[i] and "error" not in result:
                rows[i]["times"] += result["times"]
                rows[i]["extra_mib"] = max(rows[i]["extra_mib"], result["extra_mib"])
                rows[i]["process_peak_mib"] = max(rows[i]["process_peak_mib"], result["process_peak_mib"])
                rows[i]["hwm_reset"] = rows[i]["hwm_reset"] and result["hwm_reset"]
    for r in rows:
        if "error" not in r:
            r["time"] = statistics.median(r["times"])
    refs = {r["size"]: r["out"] for r in rows if r["impl"] == "torch" and "error" not in r}
    for r in rows:
        if "error" not in r and r["size"] in refs and r["impl"] != "torch":
            r["diff"] = max_abs_diff(r["out"], refs[r["size"]])
    print(machine_info() + "\n")
    print(markdown_table(rows, size_header, diff_header))
    return rows
