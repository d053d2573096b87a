"""The `onnx-snn` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from onnx_snn.neurons import IDENTITY_CODES
from onnx_snn.ops import PORTABLE_STEPS
from onnx_snn.rules import rule_set


def _neurons(args: argparse.Namespace) -> int:
    from onnx_snn.mbe.presets import step_count_ratios

    rows = [
        {
            "function": p.function,
            "domain": list(p.domain),
            "bases": p.bases,
            "timesteps": p.timesteps,
            "signed": p.signed,
            "mse": error,
            "step_ratio": ratio,
        }
        for p, error, ratio in step_count_ratios()
    ]
    if args.json:
        json.dump({"points": 10_000, "presets": rows}, sys.stdout, indent=1)
        print()
        return 0
    print("MBE neuron presets: MSE against the function on 10,000 uniform points of the domain; vs ideal =")
    print("MSE / (least MSE of these bases at any T + an ideal quantiser's MSE with N x T slots): 1 = as good")
    print("as the step count allows (onnx_snn.mbe.presets.step_count_ratios)")
    print(f"{'function':<11} {'domain':<14} {'bases':>5} {'T':>3}  {'spikes':<7} {'MSE':>9} {'vs ideal':>8}")
    for r in rows:
        domain = f"[{r['domain'][0]:g}, {r['domain'][1]:g}]"
        kind = "ternary" if r["signed"] else "binary"
        print(f"{r['function']:<11} {domain:<14} {r['bases']:>5} {r['timesteps']:>3}  {kind:<7} {r['mse']:>9.2e}"
              f" {r['step_ratio']:>8.2f}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from onnx_snn import model_io
    from onnx_snn.pipeline import convert_with_report

    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise UsageError(f"{args.output}: the output would overwrite the input model; choose another path")
    _check_neuron_options(args, (args.timesteps,))
    start = time.perf_counter()
    model, report = convert_with_report(args.input, timesteps=args.timesteps, calibration=args.calibration,
                                        hybrid=args.hybrid, rules=args.rules, bases=dict(args.bases or []),
                                        identity_code=args.identity_code, op_timesteps=dict(args.op_timesteps or []),
                                        reencode=not args.no_reencode, progress=not args.json and sys.stderr.isatty(),
                                        check=not args.no_check, strict=args.strict, portable=args.portable,
                                        fix_dims=dict(args.fix_dims or []))
    seconds = time.perf_counter() - start  # calibration, rewrite, check and writing out, as the demo's "convert s"
    source_dir = os.path.dirname(os.path.abspath(args.input))
    model_io.save(model, args.output, source_dir)
    print(json.dumps({**report.to_dict(), "convert_seconds": seconds}, indent=1) if args.json
          else report.format() + f"\nconverted in {seconds:.2f} s (wall clock)\nwritten: {args.output}")
    if report.shortfall():
        print(f"onnx-snn: warning: {report.shortfall()}; the model is not fully spiking", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from onnx_snn import evaluate
    from onnx_snn.runtime import RUNTIME_ERRORS

    original = evaluate.open_session(args.original, library=False)
    spiking = evaluate.open_session(args.spiking, library=True)
    try:
        return _eval_task(args, original, spiking)
    except RUNTIME_ERRORS as e:
        raise evaluate.task_failure((args.original, args.spiking), e) from None


def _eval_task(args: argparse.Namespace, original, spiking) -> int:
    from onnx_snn import evaluate
    from onnx_snn.calibrate import load_batches
    from onnx_snn.model_io import load

    if args.task == "embeddings":
        result = {"task": "embeddings", **evaluate.embedding_tasks(original, spiking, _tokenizer(args.tokenizer))}
    elif args.task == "causal-lm":
        from onnx_snn import lm_eval
        from onnx_snn.export import smollm2_tokenizer

        tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else smollm2_tokenizer()
        windows = lm_eval.perplexity_windows(tokenizer, lm_eval.background_text(), args.window, args.stride,
                                             max_windows=args.max_windows)
        comparison = lm_eval.compare_causal_lm(original, spiking, windows, progress=sys.stderr.isatty(),
                                               window=args.window, stride=args.stride)
        print(json.dumps({"task": "causal-lm", **comparison.to_dict()}, indent=1) if args.json else comparison.format())
        return 0
    else:
        model, model_dir = load(args.original)
        batches, synthesized = load_batches(model, args.inputs, source="inputs", model_dir=model_dir)
        feeds = batches[0]
        names = [o.name for o in original.get_outputs()]
        expected, actual = (evaluate.run_or_explain(s, path, names, feeds, synthesized)
                            for s, path in ((original, args.original), (spiking, args.spiking)))
        result = {"task": "outputs", "inputs": "synthesised from the input signature" if synthesized else args.inputs,
                  "outputs": evaluate.compare_outputs(names, expected, actual)}
    print(json.dumps(result, indent=1) if args.json else evaluate.format_result(result))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from onnx_snn import sweep

    _check_neuron_options(args, tuple(args.timesteps))
    if args.task == "causal-lm":
        from onnx_snn.export import smollm2_tokenizer

        tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else smollm2_tokenizer()
        task = sweep.causal_lm_task(tokenizer, args.max_windows)
    else:
        task = sweep.embeddings_task(_tokenizer(args.tokenizer))
    if args.address:
        _serve_extra("sweep --address")
    with _joining_ray(args.address):
        result = sweep.sweep(args.model, task, tuple(args.timesteps), bases=dict(args.bases or []), address=args.address,
                             identity_code=args.identity_code, op_timesteps=dict(args.op_timesteps or []),
                             reencode=not args.no_reencode)
    written = sweep.write(result, args.out)
    print(sweep.markdown(result))
    print("written: " + ", ".join(map(str, written)))
    return 0


def _serve_extra(command: str) -> None:
    """A one-line error unless Ray Serve and tritonclient (the serve extra) are installed."""
    import importlib.util

    missing = [m for m in ("ray", "tritonclient") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"`onnx-snn {command}` needs {' and '.join(missing)}: pip install \"onnx-snn[serve]\"")


def _serve(args: argparse.Namespace) -> int:
    _serve_extra("serve")
    from onnx_snn import oip, serve
    from onnx_snn.evaluate import open_session

    if min(args.replicas, args.max_batch_size, args.threads) < 1 or args.batch_wait_ms < 0:
        raise UsageError("--replicas, --max-batch-size and --threads take a positive count, --batch-wait-ms >= 0")
    open_session(args.model, library=True)  # a model the replicas cannot load fails here, in one line
    oip.signature(args.model)
    with _joining_ray(args.address):
        serve.run(args.model, host=args.host, port=args.port, address=args.address, name=args.name,
                  replicas=args.replicas, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                  threads=args.threads)
    return 0


@contextlib.contextmanager
def _joining_ray(address: str | None):
    """Ray's refusal to join the cluster at --address as one line."""
    try:
        yield
    except ConnectionError as e:
        if address is None:
            raise
        raise UsageError(f"--address {address}: cannot join the Ray cluster ({str(e).strip().splitlines()[0]})") from None


def _triton_repo(args: argparse.Namespace) -> int:
    _serve_extra("triton-repo")
    from onnx_snn.triton import write_repository

    if args.max_batch_size < 0:
        raise UsageError("--max-batch-size takes a count >= 0 (0: no batching)")
    folder = write_repository(args.model, args.output, name=args.name, max_batch_size=args.max_batch_size,
                              server_repo=args.server_repo)
    print(f"written: {folder} (config.pbtxt, 1/model.onnx, the custom-op library)")
    return 0


def _name_equals_count(what: str, example: str):
    """An argparse type for WHAT=N (N >= 1), e.g. gelu=8."""
    def parse(text: str) -> tuple[str, int]:
        name, _, count = text.partition("=")
        if not name or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}=N, e.g. {example}")
        return name, int(count)
    return parse


_bases = _name_equals_count("FUNCTION", "gelu=8")


def _bases_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--bases", nargs="+", type=_bases, metavar="FUNCTION=N", action="extend",
                         help="bases of a neuron function, e.g. exp2=4 gelu=8 identity=4 (default: the "
                              "converter's choice, onnx_snn.neurons.DEFAULT_BASES; `onnx-snn neurons` lists the presets)")


def _neuron_options(command: argparse.ArgumentParser) -> None:
    """--bases, --identity-code, --op-timesteps and --no-reencode: the neurons the converter chooses."""
    _bases_option(command)
    command.add_argument("--identity-code", choices=IDENTITY_CODES, default="digits",
                         help="identity encoders of signed values: digits (one basis, a ternary spike decided at "
                              "every step: fewer spikes, finer steps) or binary (the identity presets); default digits")
    command.add_argument("--op-timesteps", nargs="+", type=_bases, metavar="FUNCTION=T", action="extend",
                         help="time steps of a neuron function where not --timesteps, e.g. gelu=12, or encoder=12 "
                              "for the identity encoders of linear layers and products but the FFN's hidden values "
                              "(default: the identity's, --timesteps)")
    command.add_argument("--no-reencode", action="store_true",
                         help="activation neurons (GELU, SiLU) drive the linear layers reading them directly, never "
                              "through a one-basis encoder (default: where that is expected to cost less energy)")


def _check_neuron_options(args: argparse.Namespace, timesteps: tuple[int, ...]) -> None:
    """Options no shipped neuron or rule serves are usage errors (exit 2), found before any model is read."""
    from onnx_snn.pipeline import check_options

    for t in timesteps:
        try:
            check_options(t, bases=dict(args.bases or []), op_timesteps=dict(args.op_timesteps or []),
                          identity_code=args.identity_code, hybrid=getattr(args, "hybrid", False),
                          rules=getattr(args, "rules", None))
        except ValueError as e:
            raise UsageError(str(e)) from None


def _tokenizer(folder: str | None):
    """A Hugging Face tokenizer from a folder, or all-MiniLM-L6-v2's (installed package)."""
    if folder:
        from transformers import AutoTokenizer

        from onnx_snn.evaluate import EvaluationError

        if not os.path.isdir(folder):  # else transformers takes it for a hub name
            raise EvaluationError(f"{folder}: no such folder (--tokenizer takes a Hugging Face tokenizer folder)")
        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EvaluationError(f"{folder}: not a Hugging Face tokenizer folder ({message})") from None
    from onnx_snn.export import minilm_tokenizer

    return minilm_tokenizer()


def _demo(args: argparse.Namespace) -> int:
    from onnx_snn import demo

    return demo.run(args.form, tuple(args.timesteps), rules=args.rules)


def _energy(args: argparse.Namespace) -> int:
    from onnx_snn.energy import energy_report, plot

    report = energy_report(args.original, args.spiking, args.inputs, e_mac_pj=args.e_mac, e_ac_pj=args.e_ac)
    if args.plot:
        plot(report, args.plot)
    print(report.to_json() if args.json else report.format() + (f"\nchart: {args.plot}" if args.plot else ""))
    return 0


RULE_NAMES = [r.name for r in rule_set()]


def build_parser() -> argparse.ArgumentParser:
    from onnx_snn import __version__

    parser = argparse.ArgumentParser(prog="onnx-snn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"onnx-snn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    neurons = commands.add_parser("neurons", help="list the shipped MBE neuron presets with their fit error")
    neurons.add_argument("--json", action="store_true", help="print JSON")
    neurons.set_defaults(run=_neurons)
    convert = commands.add_parser("convert", help="convert an ONNX Transformer into a spiking model")
    convert.add_argument("input", metavar="IN.onnx")
    convert.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    convert.add_argument("--timesteps", "-T", type=int, default=16, help="time steps T of every neuron (default 16)")
    convert.add_argument("--calibration", metavar="FILE.npz",
                         help="calibration inputs (arrays named like the model's inputs); default: synthesised")
    _neuron_options(convert)
    convert.add_argument("--hybrid", action="store_true", help="convert only the nonlinear ops (no encoders on linear layers)")
    convert.add_argument("--rules", nargs="+", metavar="RULE", choices=RULE_NAMES,
                         help=f"apply only these rules: {', '.join(RULE_NAMES)}")
    convert.add_argument("--fix-dims", nargs="+", type=_name_equals_count("DIM", "batch=8"), metavar="DIM=N",
                         action="extend", help="give the model's symbolic input dims fixed sizes, e.g. batch=8 "
                                               "sequence=128, after the check: for runtimes that compile for static "
                                               "shapes (IREE, tract); --portable then writes static sums")
    convert.add_argument("--portable", "--inline", nargs="?", const="arithmetic", choices=PORTABLE_STEPS,
                         help="write every spiking op out in standard ONNX ops (no custom ops, functions or loops) "
                              "for other runtimes and compilers, its neuron steps as arithmetic (the default: "
                              "onnxruntime without the library, OpenVINO, PyTorch) or select (IREE, tract); "
                              "docs/runtimes.md (--inline: the former name)")
    convert.add_argument("--no-check", action="store_true", help="skip running both models to compare their outputs")
    convert.add_argument("--json", action="store_true", help="print the report as JSON")
    convert.add_argument("--strict", action="store_true",
                         help="fail (exit 1, nothing written) unless the result is fully spiking: no nonlinear op left "
                              "on activations and (but with --hybrid) every MAC spike-driven")
    convert.set_defaults(run=_convert)
    evaluation = commands.add_parser("eval", help="run an original and a spiking model on the same inputs and compare")
    evaluation.add_argument("original", metavar="ORIGINAL.onnx")
    evaluation.add_argument("spiking", metavar="SPIKING.onnx")
    evaluation.add_argument("--task", choices=("embeddings", "causal-lm", "outputs"), default="outputs",
                            help="embeddings: sentence-embedding tasks on gensim's real text (Lee-50 Pearson, "
                                 "sentiment accuracy, cosine); causal-lm: perplexity over fixed windows of "
                                 "lee_background.cor and top-1 next-token agreement; outputs: errors and cosine "
                                 "of every output")
    evaluation.add_argument("--window", type=int, default=256, help="causal-lm: tokens per window (default 256)")
    evaluation.add_argument("--stride", type=int, default=256, help="causal-lm: tokens between windows (default 256)")
    evaluation.add_argument("--max-windows", type=int, help="causal-lm: only the first windows (default: the whole text)")
    evaluation.add_argument("--inputs", metavar="FILE.npz", help="inputs for --task outputs (default: synthesised)")
    evaluation.add_argument("--tokenizer", metavar="DIR",
                            help="Hugging Face tokenizer folder (default: all-MiniLM-L6-v2's; causal-lm: SmolLM2's)")
    evaluation.add_argument("--json", action="store_true")
    evaluation.set_defaults(run=_eval)
    sweep = commands.add_parser("sweep", help="convert at several T and measure a task at each; table, JSON, plot")
    sweep.add_argument("model", metavar="MODEL.onnx")
    sweep.add_argument("--task", choices=("embeddings", "causal-lm"), default="embeddings")
    _neuron_options(sweep)
    sweep.add_argument("--max-windows", type=int, default=32, help="causal-lm: the first windows of the text (32)")
    sweep.add_argument("--timesteps", type=int, nargs="+", default=[6, 8, 10, 12, 16, 24])
    sweep.add_argument("--tokenizer", metavar="DIR", help="Hugging Face tokenizer folder (default: all-MiniLM-L6-v2's)")
    sweep.add_argument("--out", default="sweep", metavar="DIR", help="folder for sweep.md, sweep.json, sweep.png")
    sweep.add_argument("--address", metavar="RAY_ADDRESS",
                       help="run each T's conversion and evaluation as a Ray task on this cluster (e.g. auto, or "
                            "ray://HEAD:10001); MODEL.onnx must be readable at the same path on every node")
    sweep.set_defaults(run=_sweep)
    serving = commands.add_parser("serve", help="serve a spiking model over the Open Inference Protocol with Ray Serve")
    serving.add_argument("model", metavar="MODEL.onnx")
    serving.add_argument("--name", help="the model's name in URLs (default: the file's stem)")
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serving.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    serving.add_argument("--replicas", type=int, default=1, help="replicas, each with its own session (default 1)")
    serving.add_argument("--max-batch-size", type=int, default=8,
                         help="rows along the batch axis run together (default 8; 1: no batching)")
    serving.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)")
    serving.add_argument("--threads", type=int, default=1,
                         help="onnxruntime intra-op threads per replica; each replica reserves as many CPUs (default 1)")
    serving.add_argument("--address", metavar="RAY_ADDRESS", help="join this Ray cluster (default: start a local one)")
    serving.set_defaults(run=_serve)
    triton = commands.add_parser("triton-repo", help="write a Triton Inference Server model repository for a spiking model")
    triton.add_argument("model", metavar="MODEL.onnx")
    triton.add_argument("-o", "--output", required=True, metavar="REPO", help="the repository folder")
    triton.add_argument("--name", help="the model's name in the repository (default: the file's stem)")
    triton.add_argument("--max-batch-size", type=int, default=8, help="Triton's max_batch_size (default 8; 0: no batching)")
    triton.add_argument("--server-repo", metavar="DIR",
                        help="where Triton will see REPO (e.g. /models in its container): the library's path in "
                             "config.pbtxt is written under it (default: REPO's absolute path)")
    triton.set_defaults(run=_triton_repo)
    demo = commands.add_parser("demo", help="export all-MiniLM-L6-v2, convert it and compare embeddings on real sentences")
    demo.add_argument("--form", default="legacy17", choices=("legacy14", "legacy17", "dynamo"), help="export form")
    demo.add_argument("--timesteps", type=int, nargs="+", default=[16, 12, 8])
    demo.add_argument("--rules", nargs="+", metavar="RULE", choices=RULE_NAMES,
                      help="apply only these rules, to see what each one costs")
    demo.set_defaults(run=_demo)
    energy = commands.add_parser("energy", help="spike statistics of a spiking model and its energy estimate against the original")
    energy.add_argument("original", metavar="ORIGINAL.onnx")
    energy.add_argument("spiking", metavar="SPIKING.onnx")
    energy.add_argument("--inputs", metavar="FILE.npz", help="inputs (arrays named like the model's inputs); default: synthesised")
    energy.add_argument("--json", action="store_true", help="print the report as JSON")
    energy.add_argument("--plot", metavar="FILE.png", help="write a bar chart of the firing rate per layer and op kind")
    energy.add_argument("--e-mac", type=float, default=4.6, metavar="PJ", help="energy of a MAC in pJ (default 4.6, 45 nm)")
    energy.add_argument("--e-ac", type=float, default=0.9, metavar="PJ", help="energy of an accumulate in pJ (default 0.9, 45 nm)")
    energy.set_defaults(run=_energy)
    return parser


class UsageError(ValueError):
    pass


def main(argv: list[str] | None = None) -> int:
    """Run a command. A user's mistake (a bad file, bad data) is one line on stderr and exit status 1
    (2 for usage), never a traceback."""
    from onnx_snn.calibrate import CalibrationError
    from onnx_snn.data import MissingDataError
    from onnx_snn.energy import EnergyError
    from onnx_snn.evaluate import EvaluationError
    from onnx_snn.model_io import ModelError
    from onnx_snn.pipeline import ConversionError
    from onnx_snn.runtime import LibraryError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as e:
        print(f"onnx-snn: {e}", file=sys.stderr)
        return 2
    except (ModelError, ConversionError, CalibrationError, EnergyError, EvaluationError, LibraryError,
            MissingDataError) as e:
        print(f"onnx-snn: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
