"""The papers' protocols: train, cross-validate, evaluate, report, export.

This is the only layer that knows about files, strategies and output folders.
"""
