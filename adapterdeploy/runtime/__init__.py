"""The torch-free inference runtime: onnxruntime + numpy + tokenizers + safetensors.

Public API: :class:`Deployment` (open a deployment directory, predict, fan out, manage tasks),
:class:`Prediction` (one row's result) and :class:`TaskInfo` (a task's registry entry).
"""

from adapterdeploy.runtime.deployment import Deployment
from adapterdeploy.runtime.prediction import Prediction
from adapterdeploy.runtime.registry import TaskInfo

__all__ = ["Deployment", "Prediction", "TaskInfo"]
