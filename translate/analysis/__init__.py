"""Scoring models and outputs: outlier scores, paired metrics, FID/KID."""
