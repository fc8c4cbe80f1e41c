"""orderflow's benchmark: `make bench` / `python -m bench` (see bench/README.md).

Every figure is a ratio against a baseline measured in the same run on the same
machine (a bare aiohttp app for the receiver, raw COPY for the worker), because the
machines this runs on are shared and noisy.
"""
