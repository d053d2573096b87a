"""A random-weight Keras Transformer block (LayerNormalization, Dense, GELU (tanh form), softmax attention)
exported by tf2onnx. Run in the tf2onnx venv (onnx_snn.export.export_block), not in onnx_snn's
environment: python tf_block.py OUT.onnx OPSET. Writes OUT.onnx and OUT.npz (input x)."""

import sys

import numpy as np
import tensorflow as tf
import tf2onnx
import keras

HIDDEN, HEADS, SEQ = 64, 4, 8


class Block(keras.Model):
    def __init__(self):
        super().__init__()
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.qkv = keras.layers.Dense(3 * HIDDEN)
        self.proj = keras.layers.Dense(HIDDEN)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.up = keras.layers.Dense(4 * HIDDEN)
        self.down = keras.layers.Dense(HIDDEN)

    def heads(self, t):
        return tf.transpose(tf.reshape(t, [-1, SEQ, HEADS, HIDDEN // HEADS]), [0, 2, 1, 3])

    def call(self, x):
        q, k, v = tf.split(self.qkv(self.norm1(x)), 3, axis=-1)
        scores = tf.matmul(self.heads(q), self.heads(k), transpose_b=True) / np.sqrt(HIDDEN // HEADS)
        attended = tf.matmul(tf.nn.softmax(scores, axis=-1), self.heads(v))
        x = x + self.proj(tf.reshape(tf.transpose(attended, [0, 2, 1, 3]), [-1, SEQ, HIDDEN]))
        # GELU's tanh form: TF writes the exact one with Erfc, which tf2onnx cannot convert
        return x + self.down(tf.nn.gelu(self.up(self.norm2(x)), approximate=True))


def main(out: str, opset: int) -> None:
    keras.utils.set_random_seed(0)
    block = Block()
    x = np.random.default_rng(0).standard_normal((4, SEQ, HIDDEN)).astype(np.float32)
    block(x)
    for norm in (block.norm1, block.norm2):  # not the ones and zeros they start with
        norm.set_weights([np.random.uniform(0.5, 1.5, HIDDEN), np.random.uniform(-0.5, 0.5, HIDDEN)])
    function = tf.function(lambda x: block(x), input_signature=[tf.TensorSpec([None, SEQ, HIDDEN], tf.float32, "x0")])
    tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=opset, output_path=out)
    np.savez(out[: -len(".onnx")] + ".npz", x0=x, y=block(x).numpy())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
