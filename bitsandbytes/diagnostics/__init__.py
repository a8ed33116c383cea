"""`python -m bitsandbytes`: environment report, self-check of every kernel family on every device, demo."""
