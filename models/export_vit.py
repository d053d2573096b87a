"""Export a DeiT-tiny-shaped ViT (transformers ViTConfig, RANDOM weights: timm does not import here
and no ViT weights install offline) to ONNX, for op coverage only: patch-embedding Conv, GELU,
LayerNorm, Softmax and the attention products. Written to the cache folder; prints the path:
    python models/export_vit.py [--out DIR]
Needs the models extra: pip install -c constraints.txt ".[models]"
"""

import sys

from onnx_snn.export import export_command, export_vit

if __name__ == "__main__":
    sys.exit(export_command(__doc__, {"vit": export_vit}))
