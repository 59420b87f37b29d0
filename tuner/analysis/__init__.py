"""Reading a finished study: the Pareto front and hypervolume, learning curves, report figures."""
