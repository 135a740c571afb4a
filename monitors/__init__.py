"""Monitors: recording, windows, drift and quality reports, label joins (pure library; to come).

Imports neither ``service`` nor ``traffic``: the service layer hands it plain values.
"""
