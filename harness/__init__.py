"""attnbench harness: config, model, training, measurement, records, report, CLI."""
