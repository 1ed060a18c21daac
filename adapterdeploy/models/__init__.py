"""PyTorch side: adapter modules, encoder-with-adapters, task checkpoints, importers, training.

Every module here but ``commands`` (the CLI, which imports lazily so that ``--help`` stays fast) imports
torch; the runtime and the server import none of them (the torch-free data readers live in
``adapterdeploy.datasets``).
"""
