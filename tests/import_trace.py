"""A module whose import leaves a file behind, so a test can show a name was never imported.

The file is ``$PRUNERD_IMPORT_TRACE`` when that is set.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

if trace := os.environ.get("PRUNERD_IMPORT_TRACE"):
    Path(trace).write_text("imported")


def model(**_: object) -> nn.Module:
    return nn.Identity()
