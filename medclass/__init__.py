"""medclass: fine-tune, evaluate, explain and batch-score Inception V3 on medical images.

The pipeline, one stage per module, data flowing one way::

    ingest -> preprocess -> model -> train -> checkpoint -> evaluate -> report
                                       \\-> explain -> report      score
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
