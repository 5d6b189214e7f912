"""Prompts: sandboxed Jinja templates, few-shot draws, the teacher's and the student's prompt for a row."""
