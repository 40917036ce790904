"""Thin Lambda entry points: parse the event, call the logic, shape the response."""
