"""PyTorch side: adapter modules, encoder-with-adapters, task checkpoints, importers, training.

Importing this package imports torch; the runtime never does.
"""
