"""The OPD fault tests' undisturbed run, which the disturbed ones are compared with."""

import pytest

from posttrain.stages.opd.loop import run_opd
from tests.helpers import FAULT_RUN, opd_config


@pytest.fixture(scope="package")
def undisturbed(tiny_models, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("opd") / "undisturbed"
    run_opd(opd_config(tiny_models, out, (2, 3), *FAULT_RUN))
    return out
