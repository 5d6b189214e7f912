"""Where models come from and what they are: resolution to a folder, identity, tiny test models."""
