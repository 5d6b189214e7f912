"""The evaluate stage: base student, trained student and teacher on held-out real data."""
