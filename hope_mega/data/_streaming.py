"""Import mosaicml-streaming without its image and multimodal sub-packages.

`import streaming` imports `streaming.vision`, which imports torchvision; the PyPI torchvision build
is CUDA-only and breaks on import on CPU machines (and breaks `import fla` just by being present).
Registering empty modules for those two sub-packages first lets the MDS text path import cleanly.
"""

from __future__ import annotations

import sys
import types


def import_streaming() -> types.ModuleType:
    """Return the `streaming` module, importing it without torchvision."""
    if "streaming" in sys.modules and "streaming.base" in sys.modules:
        return sys.modules["streaming"]
    for name in ("streaming.vision", "streaming.multimodal"):
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    import streaming

    return streaming
