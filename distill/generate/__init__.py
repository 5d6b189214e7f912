"""The generate stage: the teacher writes completions for seed inputs through vLLM."""
