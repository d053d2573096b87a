import pytest

from helpers import random_neuron
from onnx_snn.mbe.neuron import MBEParameters


@pytest.fixture(params=[(0, 1, 4, False), (1, 3, 8, False), (2, 4, 16, True), (3, 8, 16, False), (4, 2, 1, True)],
                ids=lambda p: f"seed{p[0]}-N{p[1]}-T{p[2]}-{'signed' if p[3] else 'unsigned'}")
def any_neuron(request) -> MBEParameters:
    seed, bases, timesteps, signed = request.param
    return random_neuron(seed, bases, timesteps, signed)
