"""Graph-surgery passes: each takes a model and returns a rewritten one."""
