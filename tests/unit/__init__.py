"""unit tests (see tests/conftest.py for what each folder may need)."""
