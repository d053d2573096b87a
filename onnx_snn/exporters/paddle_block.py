"""A random-weight Paddle Transformer block (LayerNorm, Linear, GELU, softmax attention) exported by
paddle2onnx. Run in the paddle2onnx venv (onnx_snn.export.export_block), not in onnx_snn's
environment: python paddle_block.py OUT.onnx OPSET. Writes OUT.onnx and OUT.npz (input x0, Paddle's
output y)."""

import sys

import numpy as np
import paddle

HIDDEN, HEADS, SEQ = 64, 4, 8


class Block(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = paddle.nn.LayerNorm(HIDDEN, epsilon=1e-5), paddle.nn.LayerNorm(HIDDEN, epsilon=1e-5)
        for norm in (self.norm1, self.norm2):  # not the ones and zeros they start with
            norm.weight.set_value(np.random.uniform(0.5, 1.5, HIDDEN).astype(np.float32))
            norm.bias.set_value(np.random.uniform(-0.5, 0.5, HIDDEN).astype(np.float32))
        self.qkv = paddle.nn.Linear(HIDDEN, 3 * HIDDEN)
        self.proj = paddle.nn.Linear(HIDDEN, HIDDEN)
        self.up = paddle.nn.Linear(HIDDEN, 4 * HIDDEN)
        self.down = paddle.nn.Linear(4 * HIDDEN, HIDDEN)

    def forward(self, x):
        q, k, v = (t.reshape([-1, SEQ, HEADS, HIDDEN // HEADS]).transpose([0, 2, 1, 3])
                   for t in paddle.split(self.qkv(self.norm1(x)), 3, axis=-1))
        scores = paddle.matmul(q, k, transpose_y=True) / np.sqrt(HIDDEN // HEADS)
        attended = paddle.matmul(paddle.nn.functional.softmax(scores, axis=-1), v)
        x = x + self.proj(attended.transpose([0, 2, 1, 3]).reshape([-1, SEQ, HIDDEN]))
        return x + self.down(paddle.nn.functional.gelu(self.up(self.norm2(x))))


def main(out: str, opset: int) -> None:
    paddle.seed(0)
    np.random.seed(0)
    block = Block()
    block.eval()
    x = np.random.default_rng(0).standard_normal((4, SEQ, HIDDEN)).astype(np.float32)
    spec = [paddle.static.InputSpec([None, SEQ, HIDDEN], "float32", "x0")]
    paddle.onnx.export(block, out[: -len(".onnx")], input_spec=spec, opset_version=opset)
    np.savez(out[: -len(".onnx")] + ".npz", x0=x, y=block(paddle.to_tensor(x)).numpy())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
