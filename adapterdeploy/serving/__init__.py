"""HTTP serving: KServe v2 + JSON API over one cross-task batcher (FastAPI/uvicorn), metrics, admin, Ray Serve.

Modules: ``settings`` (the one Settings object), ``app`` (app factory, routes), ``batcher`` (the queue and its
single owner), ``state`` (deployment + worker threads per process), ``protocol`` / ``schemas`` (request and
response formats, limits), ``admin`` (model-repository extension), ``metrics``, ``logs``, ``server``
(uvicorn runner), ``ray_serve``, ``commands`` (``adapterdeploy serve``). Nothing is imported here, so the
CLI can list commands without importing FastAPI.
"""
