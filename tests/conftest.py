import os

import pytest

# What the `torch` marker stands for: the pinned reference (pip install -e ".[reference]").
REFERENCE_MODULES = ("torch", "transformers")


@pytest.fixture(scope="session")
def cupy():
    """The cupy module where CuPy sees a CUDA device; the test is skipped anywhere else."""
    cupy = pytest.importorskip("cupy", reason="needs CuPy")
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy installed without a usable driver
        pytest.skip(f"no CUDA device: {exc}")
    if devices < 1:
        pytest.skip("no CUDA device")
    return cupy


def _skipped_for_reference(call):
    """The reference module whose missing import skipped this test (pytest.importorskip), or None."""
    if call.excinfo is None or not call.excinfo.errisinstance(pytest.skip.Exception):
        return None
    reason = str(call.excinfo.value)
    return next((m for m in REFERENCE_MODULES if f"could not import '{m}" in reason), None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip for want of torch or transformers is a failure in two places: in a test without the `torch` marker
    (the torch-free CI stage would silently skip it, as happened before), and in any test when
    YOSO_NP_REQUIRE_REFERENCE=1 (the reference CI stage, where the reference must be installed)."""
    outcome = yield
    report = outcome.get_result()
    module = _skipped_for_reference(call) if report.skipped else None
    if module is None:
        return
    if item.get_closest_marker("torch") is None:
        report.outcome, report.longrepr = "failed", (
            f"{item.nodeid} needs {module} but is not marked @pytest.mark.torch")
    elif os.environ.get("YOSO_NP_REQUIRE_REFERENCE") == "1":
        report.outcome, report.longrepr = "failed", (
            f"{item.nodeid}: {module} is not importable, and YOSO_NP_REQUIRE_REFERENCE=1 "
            f"(install the reference: pip install -e '.[test,reference]')")
