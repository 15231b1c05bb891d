"""Figures and pages that show convergence to a reader."""
