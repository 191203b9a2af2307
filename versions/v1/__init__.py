"""Stage v1 of the IM server (see STEP.md)."""
