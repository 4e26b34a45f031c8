"""Datasets: synthetic data models of the papers and real images by name."""
