"""Throughput and quality benchmarks: ``python -m benchmarks [--quick]`` runs them all."""
