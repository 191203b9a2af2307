"""SimPy models of the imlab stages, built from parts named after their real counterparts.

The world of a stage: `stage` (`StageModel`, the run as `loadtest/runner.py` runs
it) is the stage's `server` (what `imlab/server.py` shares: nodes, handlers, push)
and holds the `store` (Redis, `imlab/store.py`), the `client` SDK (`imlab/client/`),
the load tool's `users` (`loadtest/users.py`), the `consumers` loop
(`imlab/consumers.py`) over the `kafka` broker and `kafka_group` consumers, `chaos`
(the fault plan, `imlab/chaos.py`) and the `ledger` (the model's own bookkeeping).
`routing` is what v3, v4 and v5 share (`imlab/routing.py`); `sqlstore` is v5's
PostgreSQL (`imlab/sqlstore.py`); `v1`..`v5` are one model per stage.

Underneath: `core` holds the distributions and seeded streams, `engine` the fast FIFO
server, the shared `Machine` (a real run's processes and the load tool on this machine's
cores, `imlab sim --this-machine`) and samplers the models run on, `theory` the closed-
form results they are validated against, `history` the run-folder writer, `scenario` the
load tool's scenarios, `params` the calibrated numbers (each stage's own in
`calibration/<stage>.json`, fitted by `imlab calibrate` on its real capacity ladder,
benchmarks/fidelity.py). `run` is the `imlab sim` run (with `population`, the figures
only a simulation knows), `sweep` the scale-out curves (`imlab sim --sweep`: knees
against node counts), `calibrate` the `imlab calibrate` fit, `cli` both subcommands.

Populations too large to simulate user by user (`imlab sim --sample F`, `sample`):
a random fraction F of the conversations is simulated message by message and the
rest of the population is aggregate load on every server, Redis and the Kafka
consumers. The sample sees latency distributions, ratios and saturation; it cannot
see events rarer than one in the sampled messages (a loss of one message in a
million), redis-py's pool limit, or bursts shorter than the gap between two
sampled sends; near saturation (busiest process above ~0.7) its p99 runs high
(v2 at 0.8: 17 ms against the full run's 8 ms). `sample`'s docstring has the rest.
"""
