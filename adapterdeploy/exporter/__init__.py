"""torch -> ONNX: a shared banked featurizer + per-task pieces, parity-checked, written atomically.

Entry points: :mod:`adapterdeploy.exporter.deployment` (``export_deployment``, ``add_task``,
``remove_task``, ``inspect``) and the CLI in :mod:`adapterdeploy.exporter.commands`. Nothing is imported
here, so ``adapterdeploy --help`` and ``inspect`` stay free of torch.
"""
