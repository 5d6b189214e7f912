"""The train stage: LoRA fine-tuning of the student on the kept rows."""
