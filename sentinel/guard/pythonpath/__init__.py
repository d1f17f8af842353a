"""Not imported as a package: this directory goes on the app's PYTHONPATH (`sentinel guard path`).

It holds `sitecustomize.py` (the loader) and `sentinel_guard.py` (the guard). The `__init__.py`
only exists so that packaging ships the directory as part of sentinel.
"""
