"""One trial end to end: the worker loop, its budget, the objective, the outcome types, the warm child, the launcher."""
