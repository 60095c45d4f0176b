"""`yoso-np` (also `python -m yoso_np`): the command line.

    yoso-np fill-mask uw-madison/yoso-4096 "Paris is the <mask> of France." --top-k 3
    yoso-np info uw-madison/yoso-4096

Each subcommand is one function registered with @command: it receives the argparse namespace and returns the
exit status. Its arguments are declared by the `arguments` function given to @command. User errors (a missing
model, a text without mask, a bad option) print one line `yoso-np: error: ...` to stderr and exit with 2.
"""
import argparse
import json
import math
import sys

PROG = "yoso-np"
COMMANDS = {}  # name -> (help, add_arguments(parser), run(args) -> int)


class UsageError(Exception):
    """A mistake in the command line, reported as one line and exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and exits; we report one line from main instead
        raise UsageError(f"{message} (see {self.prog} --help)")


def command(name, help, arguments):
    """Register ``run(args) -> int`` as subcommand ``name``; ``arguments(parser)`` declares its arguments."""
    def register(run):
        COMMANDS[name] = (help, arguments, run)
        return run
    return register


def add_hub_arguments(parser):
    """MODEL and the options that say where to find it (shared by every subcommand that loads a model)."""
    parser.add_argument("model", metavar="MODEL", help="local folder or hub repo id (e.g. uw-madison/yoso-4096)")
    parser.add_argument("--revision", help="hub branch, tag or commit")
    parser.add_argument("--cache-dir", help="hub cache folder (default: huggingface_hub's)")
    parser.add_argument("--local-files-only", action="store_true", help="use the hub cache only, no network")
    parser.add_argument("--token", help="hub token for private or gated repos")


def hub_kwargs(args):
    return dict(revision=args.revision, cache_dir=args.cache_dir, local_files_only=args.local_files_only,
                token=args.token)


def bounded(kind, low, strict=True):
    """An argparse type: a finite int or float above ``low`` (or at least ``low`` when not strict)."""
    noun = "integer" if kind is int else "number"
    if strict and low == 0:
        what = f"a positive {noun}"
    else:
        what = f"{'an' if kind is int else 'a'} {noun} {'>' if strict else '>='} {low}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


positive_int = bounded(int, 0)


# ------------------------------------------------------------------------------------------------ fill-mask
def fill_mask_arguments(parser):
    add_hub_arguments(parser)
    parser.add_argument("text", metavar="TEXT", help="text holding the mask token, e.g. 'Paris is the <mask>.'")
    parser.add_argument("--top-k", type=positive_int, default=5, help="predictions per mask (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")


@command("fill-mask", "predict the masked token(s) of a text", fill_mask_arguments)
def fill_mask(args):
    from .pipelines import pipeline

    fill = pipeline("fill-mask", args.model, device=args.device, **hub_kwargs(args))
    result = fill(args.text, top_k=args.top_k)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    per_mask = [result] if result and isinstance(result[0], dict) else result
    for i, predictions in enumerate(per_mask):
        if len(per_mask) > 1:
            print(f"{'' if i == 0 else chr(10)}mask {i + 1} of {len(per_mask)}")
        rows = [(f"{p['score']:.4f}", repr(p["token_str"]), p["sequence"]) for p in predictions]
        widths = [max(len(r[c]) for r in rows + [("score", "token", "sequence")]) for c in range(2)]
        print(f"{'score':>{widths[0]}}  {'token':<{widths[1]}}  sequence")
        for score, token, sequence in rows:
            print(f"{score:>{widths[0]}}  {token:<{widths[1]}}  {sequence}")
    return 0


# ------------------------------------------------------------------------------------------------ info
@command("info", "print a model's config, class and parameter count", add_hub_arguments)
def info(args):
    from .pipelines import checkpoint_class

    hub = hub_kwargs(args)
    model = checkpoint_class(args.model, **hub).from_pretrained(args.model, **hub)
    for key, value in model.config.to_dict().items():
        print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    print(f"class: {type(model).__name__}")
    print(f"parameters: {model.num_parameters():,}")
    return 0


# ------------------------------------------------------------------------------------------------ finetune
def finetune_arguments(parser):
    from .train import add_finetune_arguments

    add_finetune_arguments(parser)


@command("finetune", "fine-tune a YOSO checkpoint with SGD, no torch (see yoso_np.train)", finetune_arguments)
def finetune(args):
    from .train import run_finetune

    return run_finetune(args)


# ------------------------------------------------------------------------------------------------ predict
def predict_arguments(parser):
    from .pipelines import ALIASES, TASKS

    add_hub_arguments(parser)
    parser.add_argument("--task", required=True, choices=sorted([*TASKS, *ALIASES]), help="what to predict")
    parser.add_argument("--input", required=True, metavar="FILE",
                        help="rows to predict: .jsonl/.ndjson, .json (a list), .csv, .tsv or .parquet")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="where the rows go with their predictions: .jsonl, .parquet, or a folder of shards "
                             "when PATH ends with /")
    parser.add_argument("--text-field", default="text", help="field holding the text (default text)")
    parser.add_argument("--text-pair-field", help="field holding the second text of a pair (text-classification)")
    parser.add_argument("--question-field", default="question", help="question-answering: (default question)")
    parser.add_argument("--context-field", default="context", help="question-answering: (default context)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="rows per model call (default 16)")
    parser.add_argument("--max-length", type=positive_int,
                        help="longest input in tokens (default the model's; question-answering: the window)")
    parser.add_argument("--truncation", action="store_true", help="cut longer texts instead of refusing them")
    parser.add_argument("--top-k", type=positive_int,
                        help="text-classification: the k best labels as a list; fill-mask (default 5) and "
                             "question-answering: predictions per row")
    parser.add_argument("--pooling", choices=("mean", "cls", "none"), default="mean",
                        help="feature-extraction: one vector per row (default mean) or every token's (none)")
    parser.add_argument("--normalize", action="store_true", help="feature-extraction: unit-length vectors")
    parser.add_argument("--aggregation-strategy", choices=("none", "simple", "first", "average", "max"),
                        default="none", help="token-classification: how tokens become entities")
    parser.add_argument("--doc-stride", type=bounded(int, 0, strict=False),
                        help="question-answering: tokens shared by consecutive windows of a long context")
    parser.add_argument("--prefix", default="", help="put before the prediction fields' names (e.g. pred_)")
    parser.add_argument("--shard-size", type=positive_int, default=1000,
                        help="rows per shard, the unit of resuming (default 1000)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="run on Ray Data: the cluster at ADDRESS ('auto': the one this machine joined), or a "
                             "local cluster started for the run when no ADDRESS is given; PATH must be a folder")
    parser.add_argument("--num-workers", type=positive_int,
                        help="--ray: model actors (default: fit the cluster's CPUs, leaving room for reading and "
                             "writing)")


@command("predict", "run a model over a file of rows (see yoso_np.predict)", predict_arguments)
def predict(args):
    from .predict import PredictOptions, model_fingerprint, run_predict

    options = PredictOptions(
        task=args.task, text_field=args.text_field, text_pair_field=args.text_pair_field,
        question_field=args.question_field, context_field=args.context_field, batch_size=args.batch_size,
        max_length=args.max_length, truncation=args.truncation, top_k=args.top_k,
        pooling=None if args.pooling == "none" else args.pooling, normalize=args.normalize,
        aggregation_strategy=args.aggregation_strategy, doc_stride=args.doc_stride, prefix=args.prefix)
    hub = hub_kwargs(args)
    if args.ray is not None:
        from .ray_data import run_ray

        rows = run_ray(args.model, args.input, args.output, options, address=args.ray or None,
                       num_workers=args.num_workers, device=args.device, quiet=args.quiet, **hub)
    else:
        from .pipelines import pipeline

        rows = run_predict(lambda: pipeline(options.task, args.model, device=args.device,
                                            batch_size=args.batch_size, **hub),
                           args.input, args.output, options, model_id=model_fingerprint(args.model, args.revision),
                           shard_size=args.shard_size, quiet=args.quiet)
    if not args.quiet:
        print(f"{PROG}: wrote {rows} rows to {args.output}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ parity
def parity_arguments(parser):
    from .testing.parity import DEFAULT_ATOL

    add_hub_arguments(parser)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--text", action="append", help="an input text (repeat for a batch)")
    inputs.add_argument("--length", type=positive_int, help="random token ids of this length instead of text")
    parser.add_argument("--batch", type=positive_int, default=1, help="rows of random tokens (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="for the random tokens and the sampling (default 0)")
    parser.add_argument("--grads", action="store_true", help="compare the gradients too")
    parser.add_argument("--atol", type=bounded(float, 0), default=DEFAULT_ATOL,
                        help=f"tolerance relative to each output's scale (default {DEFAULT_ATOL:.2e})")
    parser.add_argument("--mode", choices=("expectation", "sampling", "both"), default="both",
                        help="attention mode(s) to run (default both)")
    parser.add_argument("--emulate", action="store_true",
                        help="run the CUDA backend on yoso_np.testing's CPU emulator (no GPU needed)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


@command("parity", "compare CPU float64, CPU float32 and CUDA float32 outputs of a model (exit 1 above --atol)",
         parity_arguments)
def parity(args):
    from .testing.parity import format_table, run_parity

    modes = ("expectation", "sampling") if args.mode == "both" else (args.mode,)
    report = run_parity(args.model, texts=args.text, length=args.length, batch=args.batch, seed=args.seed,
                        grads=args.grads, atol=args.atol, emulate=args.emulate, modes=modes, **hub_kwargs(args))
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0 if report["ok"] else 1


# ------------------------------------------------------------------------------------------------ main
def build_parser():
    parser = ArgumentParser(prog=PROG, description="YOSO transformers in NumPy and CuPy")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help, arguments, run) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help, description=help)
        arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv=None):
    """Run the command line ``argv`` (default sys.argv[1:]); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, OSError, ImportError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
