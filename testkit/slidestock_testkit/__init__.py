"""What the demo, the tests and the benchmarks need and the workflow never runs: fixture writers,
loopback servers, the fault proxy and a local SLURM."""
