"""The `onnx-snn` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from onnx_snn.rules import rule_set


def _neurons(args: argparse.Namespace) -> int:
    from onnx_snn.mbe.functions import mse
    from onnx_snn.mbe.presets import presets

    rows = [
        {
            "function": p.function,
            "domain": list(p.domain),
            "bases": p.bases,
            "timesteps": p.timesteps,
            "signed": p.signed,
            "mse": mse(p),
        }
        for p in presets()
    ]
    if args.json:
        json.dump({"points": 10_000, "presets": rows}, sys.stdout, indent=1)
        print()
        return 0
    print("MBE neuron presets: MSE against the function on 10,000 uniform points of the domain")
    print(f"{'function':<11} {'domain':<14} {'bases':>5} {'T':>3}  {'spikes':<7} {'MSE':>9}")
    for r in rows:
        domain = f"[{r['domain'][0]:g}, {r['domain'][1]:g}]"
        kind = "ternary" if r["signed"] else "binary"
        print(f"{r['function']:<11} {domain:<14} {r['bases']:>5} {r['timesteps']:>3}  {kind:<7} {r['mse']:>9.2e}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from onnx_snn import model_io, ops
    from onnx_snn.pipeline import convert_with_report

    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise UsageError(f"{args.output}: the output would overwrite the input model; choose another path")
    model, report = convert_with_report(args.input, timesteps=args.timesteps, calibration=args.calibration,
                                        hybrid=args.hybrid, rules=args.rules, bases=dict(args.bases or []),
                                        op_timesteps=dict(args.op_timesteps or []), reencode=not args.no_reencode,
                                        progress=not args.json and sys.stderr.isatty(),
                                        check=not args.no_check, strict=args.strict)
    if args.inline:
        model = ops.inline(model)
    source_dir = os.path.dirname(os.path.abspath(args.input))
    model_io.save(model, args.output, source_dir)
    print(report.to_json() if args.json else report.format() + f"\nwritten: {args.output}")
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

    if args.task == "causal-lm":
        from onnx_snn.export import smollm2_tokenizer

        tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else smollm2_tokenizer()
        task = sweep.causal_lm_task(tokenizer, args.max_windows)
    else:
        task = sweep.embeddings_task(_tokenizer(args.tokenizer))
    result = sweep.sweep(args.model, task, tuple(args.timesteps), bases=dict(args.bases or []),
                         op_timesteps=dict(args.op_timesteps or []), reencode=not args.no_reencode)
    written = sweep.write(result, args.out)
    print(sweep.markdown(result))
    print("written: " + ", ".join(map(str, written)))
    return 0


def _bases(text: str) -> tuple[str, int]:
    function, _, count = text.partition("=")
    if not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FUNCTION=N, e.g. gelu=8")
    return function, int(count)


def _bases_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--bases", nargs="+", type=_bases, metavar="FUNCTION=N", action="extend",
                         help="bases of a neuron function, e.g. exp2=4 gelu=8 identity=4 (default: the "
                              "converter's choice, onnx_snn.neurons.DEFAULT_BASES; `onnx-snn neurons` lists the presets)")


def _neuron_options(command: argparse.ArgumentParser) -> None:
    """--bases, --op-timesteps and --no-reencode: the neurons the converter chooses."""
    _bases_option(command)
    command.add_argument("--op-timesteps", nargs="+", type=_bases, metavar="FUNCTION=T", action="extend",
                         help="time steps of a neuron function where not --timesteps, e.g. gelu=12, or encoder=16 "
                              "for the identity encoders of linear layers and products but the FFN's hidden values "
                              "(default: onnx_snn.neurons.encoder_timesteps, 12 at most)")
    command.add_argument("--no-reencode", action="store_true",
                         help="activation neurons (GELU, SiLU) drive the linear layers reading them directly, never "
                              "through a one-basis encoder (default: where that is expected to cost less energy)")


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
    parser = argparse.ArgumentParser(prog="onnx-snn", description=__doc__)
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
    convert.add_argument("--inline", action="store_true", help="inline the spiking ops' functions: standard ONNX only")
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
    sweep.set_defaults(run=_sweep)
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
