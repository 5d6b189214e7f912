"""Reading real data files and splitting them into seeds and held-out evaluation items."""
