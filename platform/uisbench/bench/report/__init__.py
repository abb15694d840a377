"""Presentation: the leaderboard tables, report.html and its pictures, from finished results.

Nothing in this folder computes a result, so it is outside every code fingerprint (``_code``):
editing the report never recomputes a cached stage. Private to the bench engine."""
