"""Export small random-weight Transformer blocks with other frameworks' ONNX exporters (tf2onnx from
Keras, jax2onnx from flax, paddle2onnx from Paddle), each run in a venv of its own under the cache
folder (made on first use: minutes; the frameworks would change onnx, protobuf and numpy here).
Written to the cache folder with a .npz of an input and the framework's output; prints the paths:
    python models/export_exporter_blocks.py [--out DIR] [--forms NAME ...]
"""

import sys

from onnx_snn.export import EXPORTER_BLOCKS, export_block, export_command

if __name__ == "__main__":
    sys.exit(export_command(__doc__, {name: lambda out, spec=spec: export_block(*spec, out_dir=out)
                                      for name, spec in EXPORTER_BLOCKS.items()}))
