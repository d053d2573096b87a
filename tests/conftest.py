import os

import pytest
from hypothesis import HealthCheck, settings

from helpers import random_neuron
from onnx_snn.mbe.neuron import MBEParameters

# hypothesis: the default (CI) profile runs a bounded set of examples, the same in every run; the
# long one (HYPOTHESIS_PROFILE=long, see docs/design.md) many more, new ones each run
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=_SLOW_IS_FINE)
settings.register_profile("long", max_examples=1000, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW_IS_FINE)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=[(0, 1, 4, 0), (1, 3, 8, 0), (2, 4, 16, 1), (3, 8, 16, 0), (4, 2, 1, 1), (5, 3, 8, 2),
                        (6, 1, 16, 2), (7, 2, 1, 2)],
                ids=lambda p: f"seed{p[0]}-N{p[1]}-T{p[2]}-{('unsigned', 'signed', 'digits')[p[3]]}")
def any_neuron(request) -> MBEParameters:
    seed, bases, timesteps, signed = request.param
    return random_neuron(seed, bases, timesteps, signed)
