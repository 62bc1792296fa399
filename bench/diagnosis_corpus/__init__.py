"""A mismatch corpus of our own, and a command that scores the product's diagnosis on it (issue 11).

- :mod:`.generator`: a realistic event log in Postgres (sessions and bursts, re-delivered events,
  events on window bounds, NULLs, daily charges at exact hours, late events), from a seed;
- :mod:`.scenarios`: the correct definition, the defects that can be injected, the scenarios;
- :mod:`.truth`: each scenario's ground truth from the raw data and the injected defects alone;
- :mod:`.runner`: the legacy Redis store, the new store's views, the product's ``run_shadow``;
- :mod:`.score` and :mod:`.report`: the scores, as tables and JSON.

Run ``python -m bench.diagnosis_corpus`` (see ``docs/diagnosis_corpus.md``).
"""
