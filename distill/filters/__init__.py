"""The filter stage: each filter flags rows with a reason; nothing is deleted."""
