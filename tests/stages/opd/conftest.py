"""The OPD tests' shared runs are session fixtures in tests/conftest.py (`undisturbed`, also used by
tests/test_bad_input.py)."""
