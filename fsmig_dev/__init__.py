"""Development-only code, kept out of the provider's wheel: the demo, the embedded servers, test data.

``make demo``, ``make airflow``, the tests and the benchmarks import it from the checkout (the
repository root is on their ``sys.path``); a user who ``pip install``\\ s the provider never gets it.
"""
