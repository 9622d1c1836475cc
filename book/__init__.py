"""Transformer from Scratch: the components the chapters build.

Each module but this one, ``cli`` and ``__main__`` is generated from the
``export`` cells of one chapter (see the banner at its top).
"""
