"""Session set-up shared by every test module."""

import os

import torch

# Triton reads TRITON_INTERPRET when its modules are first imported, and other packages
# (Torch-Pruning among them) may import Triton before the kernel tests do: without a GPU,
# the kernels run under the interpreter for the whole session.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
