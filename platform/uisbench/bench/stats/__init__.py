"""Numbers about the finished cells: intervals and seed repeats (``uncertainty``), the ranking,
the label-free agreement and stability, label efficiency. Private to the bench engine."""
