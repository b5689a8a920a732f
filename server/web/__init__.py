"""posters-web: an HTTP gateway in front of posters-serve (a gRPC *client* of it).

A REST/JSON API mirroring the RPCs (``server.web.api``), its OpenAPI document and an interactive docs page,
a browse page and a quality page (static HTML + CSS + vanilla JS in ``static/``). Needs the ``[web]`` extra
(FastAPI, uvicorn, python-multipart); ``create_app`` in ``server.web.app``, ``main`` in ``server.web.cli``.
"""
