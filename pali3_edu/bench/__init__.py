"""Benchmarks: ``python -m pali3_edu.bench <name>`` (see ``__main__``). Never run as tests."""
