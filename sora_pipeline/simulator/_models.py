"""Access to `sora_pipeline.fal.models` that survives a half-finished `sora_pipeline.fal` package.

The simulator only needs the pure pydantic models. If importing the package fails (e.g. its `__init__` pulls in
a client module that is broken or not there yet), load `models.py` on its own under a private name.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

try:
    from sora_pipeline.fal import models as _models
except ImportError:  # pragma: no cover - depends on the state of the sibling package
    _name = "sora_pipeline.simulator._fal_models_standalone"
    _models = sys.modules.get(_name)
    if _models is None:
        _path = Path(__file__).resolve().parent.parent / "fal" / "models.py"
        _spec = importlib.util.spec_from_file_location(_name, _path)
        assert _spec is not None and _spec.loader is not None
        _models = importlib.util.module_from_spec(_spec)
        sys.modules[_name] = _models
        _spec.loader.exec_module(_models)

DEFAULT_ENDPOINT_ID: str = _models.DEFAULT_ENDPOINT_ID
ImageToVideoInput = _models.ImageToVideoInput
validation_messages = _models.validation_messages

__all__ = ["DEFAULT_ENDPOINT_ID", "ImageToVideoInput", "validation_messages"]
