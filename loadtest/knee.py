"""The knee finder lives in reports/knee.py (pure logic), so that the report, a floor
below loadtest, can judge a capacity ladder from its run folders; this name stays for
the callers that know it."""

from reports.knee import CONFIRM, DEFAULT_THRESHOLD_MS, Knee, Level, Status, find_knee, past_knee

__all__ = ["CONFIRM", "DEFAULT_THRESHOLD_MS", "Knee", "Level", "Status", "find_knee", "past_knee"]
