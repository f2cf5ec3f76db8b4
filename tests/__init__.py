"""The test suite. CURATE_TEST_DEVICE=cuda runs its models on that device (.ci/gpu-check on a machine
with a GPU): every `pick_device` asked for the CPU or `auto` answers it, in the tests and in the child
processes that import `tests.*`. It is set here, before any stage module imports `pick_device`."""

import os

if os.environ.get("CURATE_TEST_DEVICE"):
    import curate.device

    _pick_device = curate.device.pick_device

    def _pick_test_device(asked: str = "auto"):
        return _pick_device(os.environ["CURATE_TEST_DEVICE"] if asked in ("auto", "cpu") else asked)

    curate.device.pick_device = _pick_test_device
