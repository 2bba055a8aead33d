"""Fuzzing of framehub's input checks (``make fuzz``, issue 14); not part of ``make test``.

One module per target, each with a ``target(work)`` that builds a :class:`fuzz.engine.Target`:

- ``frames``: the live frame check (``server.media.frames``);
- ``archives``: the repository archive member checks (``server.store.archives``);
- ``settings``: the settings loader with its environment (``server.settings``);
- ``cookies``: the cursor cookie decoder (``server.web.cursor_cookie``);
- ``multipart``: ``POST /batch`` bodies, through the real app on loopback;
- ``probe``: the upload probe in its child process, on a mutation corpus of PyAV-made videos.

``python -m fuzz`` (:mod:`fuzz.__main__`) runs them for a bounded time each and reports what was
found; :mod:`fuzz.engine` drives atheris, or hypothesis where atheris does not install. Seeds are
made in code (:mod:`fuzz.seeds`). What a run finds becomes a test in ``tests/test_fuzz_found.py``.
"""
