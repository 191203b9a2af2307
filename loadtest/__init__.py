"""Load tests: Locust scenarios on the synchronous client, the runner behind `imlab load`,
and the pieces they share (the run plan, schedules, churn, resource sampling).

Only `loadtest.users`, `loadtest.worker`, `loadtest.shapes` and `loadtest/locustfile.py`
import Locust (and so gevent's monkey-patching); they run inside the Locust processes
alone. `loadtest.protocol` is the runner's and the Locust processes' shared word on files.
"""
