"""CPU forward of a base-size YosoModel: yoso_np (NumPy) against transformers (torch) and ONNX Runtime.

    python benchmarks/bench_inference.py                                  # batch 1, n = 512, 1024, 4096, all impls
    python benchmarks/bench_inference.py --layers 2 --shapes 1x16,1x128,32x128,8x512 --rounds 3
                                                 # batches of short and medium texts
    python benchmarks/bench_inference.py --layers 1 --shapes 1x128 --repeats 1   # smoke test
    python benchmarks/bench_inference.py --impl yoso_np,yoso_np_sampling,floor --shapes 1x4096 --rounds 3
                                                 # with the floor under the sampling mode's time (see PROBES)

Each (impl, batch x n) runs in a fresh process: time, peak extra memory of one forward, and the output is compared
with torch's. See benchmarks/README.md.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # common.py, and this checkout's yoso_np uninstalled
import common  # noqa: E402

IMPLS = ("yoso_np", "torch", "onnx", "yoso_np_sampling")
# probes, run only when --impl names them. floor: the sampling forward with its attention kernels skipped (the hashing
# and cumulation return zeros); every other part of the forward runs, so no sampling attention can take the whole
# model below this time: the floor under yoso_np_sampling's ratio to yoso_np. products: only the model's dense layers
# (yoso_np's linear on NumPy's BLAS, each layer's six products with their biases) on the batch's tokens: no forward
# on this BLAS can be faster, the floor under yoso_np's ratio to ONNX Runtime.
PROBES = ("floor", "products")


def config_for(layers, sampling=False):
    import yoso_np
    return yoso_np.YosoConfig(**common.BASE, num_hidden_layers=layers, use_expectation=not sampling)


def onnx_path(layers):
    """The cached export of transformers' YosoModel holding yoso_np's seed-SEED weights for this config."""
    key = json.dumps([config_for(layers).to_dict(), common.SEED], sort_keys=True).encode()
    return common.CACHE / f"yoso_L{layers}_{hashlib.sha1(key).hexdigest()[:10]}.onnx"


def export_onnx(layers):
    import torch
    import yoso_np

    config = config_for(layers)
    model = common.torch_model("YosoModel", config, yoso_np.YosoModel(config, seed=common.SEED).weights)

    class LastHiddenState(torch.nn.Module):  # a plain tensor output for the tracer
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids, mask = common.input_arrays(1, 16, config.vocab_size)
    path = onnx_path(layers)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    axes = {0: "batch", 1: "n"}
    torch.onnx.export(LastHiddenState(model), (torch.from_numpy(ids), torch.from_numpy(mask)), str(partial),
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                      opset_version=17, dynamo=False)
    os.replace(partial, path)


def run_case(case):
    impl, batch, n = case["impl"], case["batch"], case["n"]
    ids, mask = common.input_arrays(batch, n, common.BASE["vocab_size"])
    if impl == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if common.threads():
            options.intra_op_num_threads = options.inter_op_num_threads = common.threads()
        session = ort.InferenceSession(case["onnx"], options, providers=["CPUExecutionProvider"])
        forward = lambda: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]  # noqa: E731
    else:
        import yoso_np

        config = config_for(case["layers"], sampling=impl in ("yoso_np_sampling", "floor"))
        model = yoso_np.YosoModel(config, seed=common.SEED)
        if impl == "floor":
            skip_sampling_attention()
        if impl == "products":
            return {}, common.measure(dense_products(model, batch * n), case["repeats"], f"{impl} {batch}x{n}")[1]
        if impl == "torch":
            import torch

            torch_model = common.torch_model("YosoModel", config, model.weights)
            del model  # load_state_dict copied the weights
            t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)

            def forward():
                with torch.no_grad():
                    return torch_model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()
        else:
            def forward():
                return model(input_ids=ids, attention_mask=mask, rng=0).last_hidden_state

            model(input_ids=ids[:, :8], attention_mask=mask[:, :8], rng=0)  # numba's import and compiles: once a process
    out, stats = common.measure(forward, case["repeats"], f"{impl} {batch}x{n}")
    return ({} if impl == "floor" else {"last_hidden_state": out}), stats  # the floor's output means nothing


def dense_products(model, tokens):
    """The forward's dense layers alone, on random activations of the right shapes (the products probe)."""
    import numpy as np
    from yoso_np.layers import linear, sub

    layers = [sub(model.weights, f"encoder.layer.{i}.") for i in range(model.config.num_hidden_layers)]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((tokens, model.config.hidden_size), dtype=np.float32)
    wide = rng.standard_normal((tokens, model.config.intermediate_size), dtype=np.float32)
    names = ("attention.self.query.", "attention.self.key.", "attention.self.value.", "attention.output.dense.",
             "intermediate.dense.")

    def products():
        for p in layers:
            for name in names:
                linear(sub(p, name), x)
            linear(sub(p, "output.dense."), wide)

    return products


def skip_sampling_attention():
    """The floor probe: sampling attention (hashing and cumulation of every head) replaced by zeros."""
    import importlib

    import numpy as np

    attention = importlib.import_module("yoso_np.layers.attention")  # the module, not the function of that name
    attention.sampling_cumulation = lambda q, k, v, mask, config, rng: (np.zeros_like(v), None)


def main():
    if "--worker" in sys.argv:
        return common.worker_main(run_case)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1x512,1x1024,1x4096", help="comma-separated batch x n")
    common.add_run_arguments(parser, IMPLS, "forwards")
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (shrink for smoke tests)")
    parser.add_argument("--export-onnx", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_onnx:
        return export_onnx(args.layers)
    impls = common.chosen_impls(parser, args, IMPLS + PROBES)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]

    path = onnx_path(args.layers)
    if "onnx" in impls and not path.exists():
        common.progress(f"exporting transformers' YosoModel to {path} (once)")
        subprocess.run([sys.executable, __file__, "--export-onnx", "--layers", str(args.layers)], check=True)
    cases = common.with_run_options([dict(impl=impl, batch=b, n=n, size=f"{b}x{n}", layers=args.layers,
                                       repeats=args.repeats, onnx=str(path)) for b, n in shapes for impl in impls],
                                 args)
    print(f"## YosoModel forward on CPU: hidden 768, 12 heads, {args.layers} layers, FFN 3072, "
          f"{common.threads_note(args)}, "
          f"median of {args.repeats} after 1 warm-up, x {args.rounds} interleaved rounds\n")
    with tempfile.TemporaryDirectory(prefix="yoso_np_bench_") as out_dir:
        common.run_all(__file__, cases, out_dir, "batch x n", "max abs diff vs torch", args.rounds)


if __name__ == "__main__":
    main()
