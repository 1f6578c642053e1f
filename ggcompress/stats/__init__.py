"""Statistics of weights: GG fits, code lengths and rates, layer roles, the analyze report."""
