"""`evaluate` metric modules shipped with hf_distill, loaded offline by path (`hf_distill.metrics.load_metric`)."""
