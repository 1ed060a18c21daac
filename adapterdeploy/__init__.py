"""adapterdeploy: one shared ONNX featurizer, many hot adapter tasks.

Data flow (one subpackage per stage, imports flow one way):
``models`` (torch) -> ``exporter`` (torch + onnx) -> ``artifacts`` (pure data) -> ``runtime``
(onnxruntime + numpy + tokenizers) -> ``serving`` -> ``cli``.

This top-level module imports nothing heavy so that ``import adapterdeploy.runtime`` never pulls torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
