"""Monitors: records and their store, label joins, drift and quality, reports (pure library).

Imports neither ``service`` nor ``traffic``: the service layer hands it plain values.
"""
