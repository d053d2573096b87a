"""Export a DeiT-tiny-shaped ViT (transformers ViTConfig, RANDOM weights: timm does not import here
and no ViT weights install offline) to ONNX, for op coverage only: patch-embedding Conv, GELU,
LayerNorm, Softmax and the attention products. Written to the cache folder; prints the path:
    python models/export_vit.py [--out DIR]
Needs the models extra: pip install -c constraints.txt ".[models]"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onnx_snn.export import cache_dir, export_vit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=cache_dir() / "models")
    args = parser.parse_args(argv)
    print(export_vit(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
