"""uisbench's built-in plugins, one module per plugin.

They load through the ``uisbench`` entry-point group like any third-party plugin and import only
the public ``uisbench`` API: they are the examples vendors copy.
"""
