"""Turn the reproduction runs in MLflow (or the committed snapshot) into tables with tests.

`python -m analysis collect|export|tables`; see analysis/__main__.py.
This package reads MLflow or the snapshot only; it never imports the trainer or the runner.
"""
