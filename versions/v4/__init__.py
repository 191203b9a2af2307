"""Stage v4 of the IM server (see STEP.md)."""
