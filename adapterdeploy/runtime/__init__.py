"""The torch-free inference runtime: onnxruntime + numpy + tokenizers + safetensors.

Public API: :class:`Deployment` (open a deployment directory, predict, fan out, embed, manage tasks),
:class:`RuntimeOptions` (how to run it: precision, providers, threads, budgets), :class:`Prediction` (one
row's result), :class:`Embed` / :class:`Embedding` (an embedding row's target and result in
``predict_mixed``) and :class:`TaskInfo` (a task's registry entry).
"""

from adapterdeploy.runtime.deployment import Deployment
from adapterdeploy.runtime.embedding import Embed, Embedding
from adapterdeploy.runtime.options import RuntimeOptions
from adapterdeploy.runtime.prediction import Prediction
from adapterdeploy.runtime.registry import TaskInfo

__all__ = ["Deployment", "Embed", "Embedding", "Prediction", "RuntimeOptions", "TaskInfo"]
