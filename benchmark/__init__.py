"""shebench harness: configuration, data, models, the federated loop, runner, results and report."""
