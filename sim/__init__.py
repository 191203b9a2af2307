"""SimPy models of the imlab stages and the parts they are built from.

`core` holds the queueing blocks, `kafka` the log model, `faults` the fault spec
shared with the real load tool, `history` the run-folder writer, `theory` the
closed-form results the core is validated against. `engine` has the fast FIFO
server and samplers the stage models run on, `scenario` the load tool's
scenarios, `params` the calibrated numbers, `stage` and `routing` what the
stages share, `v1`..`v4` one model per stage, `run` the `imlab sim` run,
`calibrate` the `imlab calibrate` fit, `cli` both subcommands.
"""
