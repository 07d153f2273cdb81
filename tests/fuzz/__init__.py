"""moddep's fuzzing kit: targets, input strategies and the harness that runs them.

``tests/test_fuzz_*.py`` drive the targets with Hypothesis (property-based, in CI);
``tests/fuzz/atheris_fuzz.py`` drives the same targets coverage-guided when atheris is
installed. Every input that ever failed is kept in ``tests/fuzz/regressions/TARGET/`` and
replayed by ``tests/test_fuzz_regressions.py``. See ``tests/fuzz/README.md``.
"""
