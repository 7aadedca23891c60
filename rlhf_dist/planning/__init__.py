"""Planning before anything starts: placement of roles on nodes, the memory plan and its formulas,
and the checks of a config against this machine."""
