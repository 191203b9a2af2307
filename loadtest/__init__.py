"""Load tests: Locust scenarios on the synchronous client, the runner behind `imlab load`,
and the pieces they share (the run plan, schedules, churn, resource sampling).

Only `loadtest.users`, `loadtest.shapes` and `loadtest/locustfile.py` import Locust
(and so gevent's monkey-patching); they run inside the Locust processes alone.
"""
