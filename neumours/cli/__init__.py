"""The ``neumours`` command: ``main`` (the parser and dispatch), ``options`` (the help
formatter and shared options) and one module per command group.

``data`` (synth, inspect), ``train`` (train, plot), ``infer`` (segment,
evaluate), ``render``, ``refine``, ``demo``. Each command calls an importable
function of the library, so everything the command does is also a Python call.
Modules import the heavy parts (slangpy, torch) only when a command runs, so
``neumours --help`` stays fast.
"""
