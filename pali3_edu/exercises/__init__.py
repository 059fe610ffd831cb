"""``check_…`` helpers for the notebooks' exercise cells, one module per lesson.

Each helper runs the learner's function and the reference implementation on the same inputs,
and raises an ``AssertionError`` that explains the mismatch (or prints a short success line).
"""
