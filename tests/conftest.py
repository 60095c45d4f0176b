import pytest


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
