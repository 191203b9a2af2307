"""Stage v3 of the IM server (see STEP.md)."""
