"""Embedded simulators that stand in for data that cannot be downloaded at run time."""
