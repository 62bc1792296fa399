"""stores."""

from __future__ import annotations
