"""Session set-up shared by every test module.

The Triton interpreter is chosen here, once, from whether a GPU is present: without one,
kernels run under the interpreter on CPU tensors; with one, they compile for the GPU and
the ``gpu`` tests run there. Triton reads TRITON_INTERPRET when its modules are first
imported, and other packages (Torch-Pruning among them) may import Triton before the
kernel tests do, so the choice is made before any test module is imported.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def fail_skipped_gpu_test(report: pytest.TestReport, gpu_test: bool, has_cuda: bool) -> None:
    """With a GPU present, a ``gpu`` test that skipped is a failure: it was meant to run."""
    if has_cuda and gpu_test and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"a gpu test skipped on a machine with a CUDA device: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    gpu_test = item.get_closest_marker("gpu") is not None
    fail_skipped_gpu_test(outcome.get_result(), gpu_test, HAS_CUDA)
