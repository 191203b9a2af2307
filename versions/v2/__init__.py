"""Stage v2 of the IM server (see STEP.md)."""
