"""What is transferred and what trains when: the plan (the only place that decides it), the network it builds,
and regularisers of the transferred weights, one module each with its paper."""
