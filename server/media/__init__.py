"""Pillow and PyAV work: plain synchronous functions with explicit arguments, no aiohttp; callers
on the event loop run them in a worker thread or, for untrusted uploads, a child process."""
