"""Measuring encoders: frozen-trunk probes."""
