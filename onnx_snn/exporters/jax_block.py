"""A random-weight flax (nnx) Transformer block exported by jax2onnx: LayerNorm or RMSNorm, Linear,
GELU, softmax attention. Run in the jax2onnx venv (onnx_snn.export.export_block), not in onnx_snn's
environment: python jax_block.py OUT.onnx OPSET NORM (layernorm or rmsnorm). Writes OUT.onnx and
OUT.npz (input x0, flax's output y)."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from flax import nnx
from jax2onnx import to_onnx

HIDDEN, HEADS, SEQ = 64, 4, 8


class Block(nnx.Module):
    def __init__(self, norm: str, rngs: nnx.Rngs):
        make_norm = {"layernorm": nnx.LayerNorm, "rmsnorm": nnx.RMSNorm}[norm]
        self.norm1, self.norm2 = make_norm(HIDDEN, epsilon=1e-5, rngs=rngs), make_norm(HIDDEN, epsilon=1e-5, rngs=rngs)
        for layer in (self.norm1, self.norm2):  # not the ones and zeros they start with
            layer.scale.value = jax.random.uniform(rngs.params(), (HIDDEN,), minval=0.5, maxval=1.5)
            if getattr(layer, "bias", None) is not None:
                layer.bias.value = jax.random.uniform(rngs.params(), (HIDDEN,), minval=-0.5, maxval=0.5)
        self.qkv = nnx.Linear(HIDDEN, 3 * HIDDEN, rngs=rngs)
        self.proj = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
        self.up = nnx.Linear(HIDDEN, 4 * HIDDEN, rngs=rngs)
        self.down = nnx.Linear(4 * HIDDEN, HIDDEN, rngs=rngs)

    def __call__(self, x):
        q, k, v = (t.reshape(-1, SEQ, HEADS, HIDDEN // HEADS).transpose(0, 2, 1, 3)
                   for t in jnp.split(self.qkv(self.norm1(x)), 3, axis=-1))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HIDDEN // HEADS)
        attended = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(-1, SEQ, HIDDEN)
        x = x + self.proj(attended)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x)), approximate=False))


def main(out: str, opset: int, norm: str) -> None:
    block = Block(norm, nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((4, SEQ, HIDDEN)).astype(np.float32)
    model = to_onnx(block, [("B", SEQ, HIDDEN)], opset=opset)
    onnx.save(model, out)
    np.savez(out[: -len(".onnx")] + ".npz", x0=x, y=np.asarray(block(jnp.asarray(x))))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
