"""The `onnx-snn` command line."""

from __future__ import annotations

import argparse
import json
import sys


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


def _demo(args: argparse.Namespace) -> int:
    print("onnx-snn demo: exporting, converting and comparing all-MiniLM-L6-v2 arrives with conversion "
          "(`onnx-snn convert`); until then, `onnx-snn neurons` lists the spiking neurons.", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-snn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    neurons = commands.add_parser("neurons", help="list the shipped MBE neuron presets with their fit error")
    neurons.add_argument("--json", action="store_true", help="print JSON")
    neurons.set_defaults(run=_neurons)
    demo = commands.add_parser("demo", help="export, convert and compare a real model")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
