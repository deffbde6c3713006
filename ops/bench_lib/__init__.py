"""The benchmark harness behind ``ops/bench``: Sir Convert-a-Lot against the alternatives.

Everything runs in one invocation on one machine, so the ratios it reports are
comparable: the real daemon (``python -m daemon run``) on a temporary data root
against the same tools run per file from their command lines, against one warm
process calling the same converters, and against itself at scale. Nothing here
asserts on time; the numbers are reported, never judged by a test.
"""

__all__: list[str] = []
