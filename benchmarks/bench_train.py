"""One training step (forward + backward) of a base-width YosoForSequenceClassification on CPU: yoso_np's
forward_backward against torch autograd through transformers (eval mode, dropout off, loss.backward()).

    python benchmarks/bench_train.py                                      # batch x n = 2x512, 1x2048
    python benchmarks/bench_train.py --shapes 16x128,32x128 --rounds 3    # batches of short texts
    python benchmarks/bench_train.py --layers 1 --shapes 2x64 --repeats 1 # smoke test

yoso_np_every_token is the same step with the last layer computing every token, as torch does (models.head_rows).
Each (impl, shape) runs in a fresh process. See benchmarks/README.md.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # common.py, and this checkout's yoso_np uninstalled
import common  # noqa: E402

IMPLS = ("yoso_np", "yoso_np_every_token", "torch")


def run_case(case):
    import yoso_np

    impl, batch, n = case["impl"], case["batch"], case["n"]
    config = yoso_np.YosoConfig(**common.BASE, num_hidden_layers=case["layers"], num_labels=2)
    model = yoso_np.YosoForSequenceClassification(config, seed=common.SEED)
    ids, mask = common.input_arrays(batch, n, config.vocab_size)
    labels = np.random.default_rng(2).integers(0, 2, size=batch, dtype=np.int64)

    if impl.startswith("yoso_np"):
        if impl == "yoso_np_every_token":  # the last layer computes every token, as torch does (models.head_rows)
            model.head_rows = None

        def step():
            out, grads = model.forward_backward(input_ids=ids, attention_mask=mask, labels=labels, training=False)
            return {"loss": out.loss, "logits": out.logits, **{"grad:" + k: g for k, g in grads.items()}}

        model.forward_backward(input_ids=ids[:, :8], attention_mask=mask[:, :8], labels=labels,
                               training=False)  # numba's import and compiles: once a process
    else:
        import torch

        torch_model = common.torch_model("YosoForSequenceClassification", config, model.weights)
        del model  # load_state_dict copied the weights
        t_ids, t_mask, t_labels = (torch.from_numpy(a) for a in (ids, mask, labels))

        def step():
            torch_model.zero_grad(set_to_none=True)
            out = torch_model(input_ids=t_ids, attention_mask=t_mask, labels=t_labels)
            out.loss.backward()
            return {"loss": out.loss.detach().numpy(), "logits": out.logits.detach().numpy(),
                    **{"grad:" + k: p.grad.numpy() for k, p in torch_model.named_parameters()}}
    return common.measure(step, case["repeats"], f"{impl} {batch}x{n}")


def main():
    if "--worker" in sys.argv:
        return common.worker_main(run_case)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="2x512,1x2048", help="comma-separated batch x n")
    common.add_run_arguments(parser, IMPLS, "steps")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers")
    args = parser.parse_args()
    impls = common.chosen_impls(parser, args, IMPLS)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    cases = common.with_run_options([dict(impl=impl, batch=b, n=n, size=f"{b}x{n}", layers=args.layers,
                                       repeats=args.repeats) for b, n in shapes for impl in impls], args)
    print(f"## YosoForSequenceClassification training step on CPU: hidden 768, 12 heads, {args.layers} layers, "
          f"FFN 3072, eval mode, {common.threads_note(args)}, median of {args.repeats} after 1 warm-up, "
          f"x {args.rounds} interleaved rounds\n")
    with tempfile.TemporaryDirectory(prefix="yoso_np_bench_") as out_dir:
        common.run_all(__file__, cases, out_dir, "batch x n", "max abs diff vs torch (loss, logits, grads)",
                       args.rounds)


if __name__ == "__main__":
    main()
