"""Benchmarks: each module runs alone (``python -m bench.<name>``) and reports ratios against a
baseline measured in the same run; ``python -m bench`` runs them all."""

from __future__ import annotations
