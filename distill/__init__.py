"""distill: accountable teacher-to-student distillation, from generation to evaluation."""

__version__ = "0.1.0"
