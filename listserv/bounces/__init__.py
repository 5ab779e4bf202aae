"""Bounce mail and delivery failures: parsing, scoring, reports."""
