"""Pillow and PyAV work: plain synchronous functions with explicit arguments, no aiohttp.

Callers on the event loop run these in a worker thread or process.
"""
