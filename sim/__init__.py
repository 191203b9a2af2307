"""SimPy models of the imlab stages and the parts they are built from.

`core` holds the queueing blocks, `kafka` the log model, `faults` the fault spec
shared with the real load tool, `history` the run-folder writer, `theory` the
closed-form results the core is validated against.
"""
